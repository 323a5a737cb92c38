package rotating

// In-place compaction of a rotating set (method "auto").
//
// # When
//
// The copy (rotating.go) rewrites the survivors into new chunks. Where the
// survivors are already exactly the lines from some point of the set to
// its end, and the files holding them already are what the writer would
// have made (each at most MaxBytes, or a single line; no missing index
// among them), the same records in the same order are had by removing
// what lies before that point: the segments retention drops entirely are
// unlinked and the head of the one it drops partly is cut out of it in
// place (ndjson.HeadCut: the block-aligned part collapsed, the rest one
// filler line that Papyra's reader skips and its scan accepts). Nothing is
// copied and no free space is needed: a full disk can be compacted.
//
// The forward walk of pass 2 (planChunks) also checks this
// (rotInPlacePlan): after the first kept line, every line must be a kept,
// newline-terminated record, or a filler line that starts a file (left
// there by an earlier in-place compaction: kept as it is). Besides, in
// place needs: no chunk dropped for max_files, every file of the set with
// one link (a backup snapshot's hard link must never see its bytes move),
// a filesystem that can collapse a range when the cut needs it (ext4, XFS)
// and a write lease on the partly dropped file. Otherwise the copy
// runs; for the last three the report's notes say why.
//
// # How
//
// The prepare step of the copy has run already: the prepare journal, the
// (empty) staging directory and, when <path>.<MaxFiles-1> did not exist, an
// empty placeholder there, which stops the writer from rotating.
//
//  1. The partly dropped file is opened for writing and leased (every
//     descriptor of the compaction on it closed first): from here no other
//     process can open it until the lease is released (the writer's next
//     open of the active file waits in the kernel). Then every name of the
//     set is checked to hold the snapshot's inode (segments unchanged in
//     size): a rotation since the snapshot is ErrConcurrentRotation, and
//     nothing has changed.
//  2. The journal becomes "inplace": the file at <path>.<MaxFiles-1> when
//     retention drops it (the top, perhaps the placeholder), the other
//     segments retention drops entirely, oldest first, each with its inode,
//     and the head cut (path and ndjson.HeadCut).
//  3. The top is emptied (truncated; it keeps its name so that the writer
//     still cannot rotate), then the other dropped segments are unlinked
//     oldest first: after each step the set holds a contiguous run of the
//     newest records.
//  4. The head of the partly dropped file is cut (HeadCut.Apply under the
//     lease), and the lease released.
//  5. The emptied top is unlinked (the writer may rotate again), then the
//     staging directory and the journal.
//
// Recover, for an "inplace" journal, does steps 3 to 5 again: truncating,
// unlinking and removing only names that still hold the journaled inode, so
// each step is idempotent; the head is repaired (HeadCut.Repair) when the
// collapse happened, and cut when it had not (the first kept bytes still at
// the journaled offset). A crash before the journal leaves the set as it
// was (the prepare journal rolls back).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// rotStateInPlace is the journal state of an in-place compaction.
const rotStateInPlace = "inplace"

// Lease attempts on the partly dropped file: a writer that opens the active
// file for each record holds it open for microseconds.
var (
	rotLeaseTries = 20
	rotLeaseWait  = 5 * time.Millisecond
)

// rotInPlace is the journaled plan of an in-place compaction.
type rotInPlace struct {
	// Top is <path>.<MaxFiles-1> when retention drops it (a segment or the
	// placeholder): emptied first, removed last.
	Top *rotRemove `json:"top,omitempty"`
	// Unlinks are the other segments retention drops entirely, oldest
	// first.
	Unlinks []rotRemove `json:"unlinks,omitempty"`
	// CutPath is the file retention drops partly, Cut the removal of its
	// head; both empty when the cut falls on a file boundary.
	CutPath string          `json:"cut_path,omitempty"`
	Cut     *ndjson.HeadCut `json:"cut,omitempty"`
}

// rotFallback is returned by an attempt that found, once it had begun, that
// in place cannot run: Compact then copies, with note among the report's
// notes.
type rotFallback struct{ note string }

func (e *rotFallback) Error() string { return "compaction in place not possible: " + e.note }

// rotInPlacePlan gathers, during the forward walk of pass 2, what decides
// whether the kept region can be had by cutting the set's head.
type rotInPlacePlan struct {
	ok    bool  // nothing seen so far rules in place out
	found bool  // the first kept line was seen
	file  int   // the index in rotCompaction.files of its file
	off   int64 // and its offset there
	// lines counts, per file from the first kept line's on, its lines
	// after the first kept line (that one included), a leading filler
	// line not counted.
	lines []int64
	// fillers counts the filler lines kept as the first line of a file.
	fillers int64
	// headFiller is the file whose first line is a filler line when it is
	// the last line seen before the first kept line; -1 otherwise.
	headFiller int
	// why says why in place does not apply (debug log).
	why string
}

// observe takes one line of the kept region, in order (forEachKept).
func (p *rotInPlacePlan) observe(fi int, line []byte, off int64, kept bool) {
	if !p.ok {
		return
	}
	if !p.found {
		if !kept {
			// Before the first kept line: cut away with the head, unless
			// it is a filler line the first kept line follows.
			p.headFiller = -1
			if off == 0 && ndjson.IsFiller(line) {
				p.headFiller = fi
			}
			return
		}
		p.found, p.file, p.off = true, fi, off
		if p.headFiller == fi && off > 0 {
			p.off = 0 // the head is a filler line already: nothing to cut
			p.fillers++
		}
	}
	for int64(len(p.lines)) <= int64(fi-p.file) {
		p.lines = append(p.lines, 0)
	}
	switch {
	case kept && line[len(line)-1] != '\n':
		p.ok, p.why = false, "an unterminated record among the survivors (a rewrite gives it its newline)"
	case kept:
		p.lines[fi-p.file]++
	case off == 0 && ndjson.IsFiller(line):
		p.fillers++
	default:
		p.ok, p.why = false, "a line a rewrite drops among the survivors"
	}
}

// inPlaceWanted reports whether this attempt considers compacting in place.
func (c *rotCompaction) inPlaceWanted() bool {
	return c.r.cfg.Method == backends.MethodAuto && !c.forceCopy
}

// decideInPlace completes the plan once pass 2 has walked the kept region:
// it reports whether in place gives the records the copy would, on this
// filesystem, and plans the head cut (c.ipCut). Reasons an operator should
// know go into the notes.
func (c *rotCompaction) decideInPlace() (bool, error) {
	p := c.ip
	no := func(why string) (bool, error) {
		c.r.log.Debug("compaction in place does not apply: copying", "path", c.path, "why", why)
		return false, nil
	}
	switch {
	case !p.ok:
		return no(p.why)
	case !p.found:
		return no("no record survives")
	case c.chunkOverflow:
		return no("the survivors fill more than max_files chunks")
	}
	retained := c.files[p.file:]
	for k, f := range retained {
		if f.idx != retained[0].idx-k {
			return no("an index is missing among the files that survive")
		}
	}
	for _, f := range c.files {
		if st, ok := f.fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			c.notes = append(c.notes, fmt.Sprintf("%s has %d hard links (a backup snapshot holds it): rewritten instead of compacted in place", f.name, st.Nlink))
			return no("a linked file")
		}
	}
	c.ipCut = nil
	first := retained[0]
	collapse := int64(0)
	if p.off > 0 {
		if p.off < ndjson.MinFiller {
			return no("a one-byte head cannot hold a filler line")
		}
		h, err := ndjson.PlanHeadCut(first.f, p.off)
		if errors.Is(err, fsx.ErrNoCollapse) {
			c.notes = append(c.notes, fmt.Sprintf("the filesystem of %s cannot collapse a range of a file: rewritten instead of compacted in place", first.name))
			return no("no collapse")
		}
		if err != nil {
			return false, fmt.Errorf("plan the head cut of %s: %w", first.name, err)
		}
		if h.Collapse > 0 && !canCollapse(first.f) {
			c.notes = append(c.notes, fmt.Sprintf("the filesystem of %s cannot collapse a range of a file (tmpfs, btrfs, NFS, …): rewritten instead of compacted in place", first.name))
			return no("no collapse")
		}
		c.ipCut = &h
		collapse = h.Collapse
	}
	// Each retained file as the writer would have made it: at most
	// MaxBytes, or a single line.
	for k, f := range retained {
		size := f.size
		if k == 0 {
			size -= collapse
		}
		var lines int64
		if k < len(p.lines) {
			lines = p.lines[k]
		}
		if size > c.r.cfg.MaxBytes && lines > 1 {
			return no(fmt.Sprintf("%s would hold %d bytes, more than max_bytes, in %d lines", f.name, size, lines))
		}
	}
	c.ipCollapse = collapse
	return true, nil
}

// inPlaceChanges reports whether in place changes anything: a dropped file
// that holds bytes, or a head to cut.
func (c *rotCompaction) inPlaceChanges() bool {
	if c.ipCut != nil {
		return true
	}
	for _, f := range c.files[:c.ip.file] {
		if f.size > 0 {
			return true
		}
	}
	return false
}

// canCollapse reports whether f's filesystem is one that removes a range
// from a file in place (fallocate FALLOC_FL_COLLAPSE_RANGE): ext4 or XFS,
// the forecast fsx.CanCollapse makes for a path, here through the open
// descriptor. Elsewhere (tmpfs, btrfs, NFS, overlayfs) the head cut would
// fail; where the forecast is wrong (an ext4 file without extents), Apply
// says so and nothing is changed.
func canCollapse(f *os.File) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC:
		return true
	}
	return false
}

// runInPlace compacts the set in place, or, when that changes nothing,
// undoes what prepare made.
func (c *rotCompaction) runInPlace(ctx context.Context) error {
	if !c.inPlaceChanges() {
		return c.undoPrepare()
	}
	if err := c.inPlace(ctx); err != nil {
		return err
	}
	// Done: a failure to count what the writer appended meanwhile only
	// makes the report's counts short.
	if err := c.countAppended(ctx); err != nil {
		c.r.log.Warn("could not count the records appended during an in-place compaction", "path", c.path, "err", err)
	}
	return nil
}

// inPlace compacts the set in place (see the top of this file): lease and
// check, journal, then finishInPlace.
func (c *rotCompaction) inPlace(ctx context.Context) (err error) {
	defer func() {
		if errors.Is(err, fsx.ErrSimulatedCrash) {
			c.crashed = true
		}
	}()
	first := c.files[c.ip.file]
	// A write lease is granted only while no other descriptor of the file
	// is open, the compaction's own included.
	c.closeFiles()
	var cut *os.File
	if c.ipCut != nil {
		f, fi, err := c.ds.dir.OpenRegular(first.entry, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s disappeared: %w", first.name, backends.ErrConcurrentRotation)
		}
		if err != nil {
			return err
		}
		defer f.Close()
		if !os.SameFile(fi, first.fi) {
			return fmt.Errorf("%s was replaced: %w", first.name, backends.ErrConcurrentRotation)
		}
		if !fsx.TakeLeaseRetry(f, rotLeaseTries, rotLeaseWait) {
			return &rotFallback{note: fmt.Sprintf("another process kept %s open (no write lease): rewritten instead of compacted in place", first.name)}
		}
		defer fsx.ReleaseLease(f)
		cut = f
	}
	if err := c.point("inplace-leased"); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	jr, err := c.journalInPlace(cut)
	if err != nil {
		return err
	}
	if err := c.ds.state.WriteJSON(c.r.journalName(c.path), jr); err != nil {
		return err
	}
	c.committed = true
	if err := c.point("inplace-journal"); err != nil {
		return err
	}
	applied, err := c.r.finishInPlace(ctx, c.ds, jr, cut, c.point)
	if err != nil {
		return err
	}
	c.journal = nil // done: nothing for abort to complete
	if !applied {
		return &rotFallback{note: fmt.Sprintf("the filesystem of %s cannot collapse a range of a file: rewritten instead of compacted in place", first.name)}
	}
	return nil
}

// journalInPlace fills the journal of the in-place compaction. cut, when
// not nil, is the partly dropped file, open and leased: its head cut is
// planned again on it (the active file may have grown since the snapshot).
func (c *rotCompaction) journalInPlace(cut *os.File) (*rotJournal, error) {
	jr := c.journal
	jr.State = rotStateInPlace
	jr.Placeholder = "" // the top, when it is there
	ip := &rotInPlace{}
	top := c.r.cfg.MaxFiles - 1
	for _, f := range c.files[:c.ip.file] {
		dev, ino := fsx.InodeOf(f.fi)
		rm := rotRemove{Path: segName(c.path, f.idx), Dev: dev, Ino: ino}
		if f.idx == top {
			ip.Top = &rm
			continue
		}
		ip.Unlinks = append(ip.Unlinks, rm)
	}
	if cut != nil {
		first := c.files[c.ip.file]
		fi, err := cut.Stat()
		if err != nil {
			return nil, err
		}
		if fi.Size() < first.end {
			return nil, fmt.Errorf("%s shrank from %d to %d bytes: %w", first.name, first.end, fi.Size(), backends.ErrConcurrentRotation)
		}
		// Nobody can open the file now: the link count is final.
		if err := fsx.RefuseLinked(cut); err != nil {
			return nil, &rotFallback{note: fmt.Sprintf("%s was hard-linked (a backup snapshot holds it): rewritten instead of compacted in place", first.name)}
		}
		h, err := ndjson.PlanHeadCut(cut, c.ip.off)
		if err != nil {
			return nil, fmt.Errorf("plan the head cut of %s: %w", first.name, err)
		}
		ip.CutPath, ip.Cut = first.name, &h
		c.ipCollapse = h.Collapse
	}
	jr.InPlace = ip
	return jr, nil
}

// countAppended counts the whole lines the writer appended to the active
// file since the snapshot (they are in the compacted set: AppendedDuring).
func (c *rotCompaction) countAppended(ctx context.Context) error {
	a := c.active
	if a == nil {
		return nil
	}
	from := a.end
	if c.ipCut != nil && c.files[c.ip.file] == a {
		from -= c.ipCollapse
	}
	f, _, err := c.ds.dir.OpenRegular(a.entry, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= from {
		return err
	}
	res, err := copyWholeLines(ctx, f, from, fi.Size(), io.Discard)
	if err != nil {
		return err
	}
	c.appended, c.appendBytes = res.records, res.bytes
	return nil
}

// finishInPlaceReport fills the report of an in-place compaction (or of a
// dry run that would compact in place).
func (c *rotCompaction) finishInPlaceReport(kept int64) backends.Report {
	var after int64
	for _, f := range c.files[c.ip.file:] {
		after += f.size
	}
	after -= c.ipCollapse
	c.drop.Invalid -= c.ip.fillers // left where they are
	c.rep.Method = backends.MethodInPlace
	if !c.inPlaceChanges() {
		c.rep.Method = backends.MethodNone
	}
	return c.finish(after+c.appendBytes, kept+c.appended)
}

// finishInPlace carries out (or, from Recover with cut nil, completes) the
// in-place compaction jr journals: the top emptied, the other dropped
// segments unlinked oldest first, the head cut (with cut, open and leased,
// by Apply; else repaired or applied under a lease taken here), the top
// removed, the staging directory and the journal removed. Only names that
// hold the journaled inode are changed. applied is false when the
// filesystem refused the collapse (nothing of that file changed; the rest
// is done).
func (r *Set) finishInPlace(ctx context.Context, ds *rotDirs, jr *rotJournal, cut *os.File, point func(string) error) (applied bool, err error) {
	ip := jr.InPlace
	if ip == nil {
		return false, fmt.Errorf("journal in state %q without its plan", jr.State)
	}
	if ip.Top != nil {
		if err := r.emptyTop(ds, *ip.Top, point); err != nil {
			return false, err
		}
	}
	for _, rm := range ip.Unlinks {
		if err := r.removeDropped(ds, rm, false, point); err != nil {
			return false, err
		}
	}
	applied = true
	if ip.Cut != nil {
		if applied, err = r.cutHead(ds, ip, cut); err != nil {
			return false, err
		}
		if err := point("inplace-cut"); err != nil {
			return false, err
		}
	}
	if ip.Top != nil {
		if err := r.removeDropped(ds, *ip.Top, true, point); err != nil {
			return false, err
		}
	}
	stagingName, err := entryIn(ds.dir.Path, jr.Staging)
	if err != nil {
		return false, err
	}
	if err := ds.dir.RemoveAll(stagingName); err != nil {
		return false, fmt.Errorf("remove staging directory: %w", err)
	}
	if err := ds.dir.Sync(); err != nil {
		return false, err
	}
	return applied, ds.state.RemoveDurably(r.journalName(jr.Path))
}

// emptyTop truncates the dropped segment at <path>.<MaxFiles-1> to nothing
// when it still is the journaled inode: its records are gone, its name
// stays (the writer does not rotate while it exists).
func (r *Set) emptyTop(ds *rotDirs, top rotRemove, point func(string) error) error {
	name, err := entryIn(ds.dir.Path, top.Path)
	if err != nil {
		return err
	}
	f, fi, err := ds.dir.OpenRegular(name, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if dev, ino := fsx.InodeOf(fi); dev != top.Dev || ino != top.Ino {
		r.log.Warn("dropped segment was replaced since the compaction began; left in place", "path", top.Path)
		return nil
	}
	if fi.Size() == 0 {
		return nil
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("empty %s: %w", top.Path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", top.Path, err)
	}
	return point("inplace-emptied:" + name)
}

// removeDropped unlinks the dropped segment rm when its name still holds
// the journaled inode (and, with onlyEmpty, the file is empty); a missing
// name is fine.
func (r *Set) removeDropped(ds *rotDirs, rm rotRemove, onlyEmpty bool, point func(string) error) error {
	name, err := entryIn(ds.dir.Path, rm.Path)
	if err != nil {
		return err
	}
	fi, err := ds.dir.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if dev, ino := fsx.InodeOf(fi); dev != rm.Dev || ino != rm.Ino {
		r.log.Warn("dropped segment was replaced since the compaction began; left in place", "path", rm.Path)
		return nil
	}
	if onlyEmpty && fi.Size() != 0 {
		r.log.Warn("emptied segment holds data again; left in place", "path", rm.Path)
		return nil
	}
	if err := ds.dir.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove dropped segment: %w", err)
	}
	if err := ds.dir.Sync(); err != nil {
		return err
	}
	return point("inplace-unlinked:" + name)
}

// cutHead removes the journaled head of ip.CutPath. With cut (the file,
// open and leased, the head untouched) it applies the plan; from Recover
// (cut nil) it leases the file itself, repairs the head when the collapse
// happened and applies the plan when it had not. applied is false when the
// filesystem refused the collapse.
func (r *Set) cutHead(ds *rotDirs, ip *rotInPlace, cut *os.File) (applied bool, err error) {
	h := *ip.Cut
	if cut == nil {
		name, err := entryIn(ds.dir.Path, ip.CutPath)
		if err != nil {
			return false, err
		}
		f, _, err := ds.dir.OpenRegular(name, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			return true, nil // gone (Papyra's own compaction?): nothing to cut
		}
		if err != nil {
			return false, err
		}
		defer f.Close()
		if !fsx.TakeLeaseRetry(f, rotLeaseTries, rotLeaseWait) {
			return false, fmt.Errorf("cut the head of %s after an interrupted in-place compaction: another process keeps it open: %w", ip.CutPath, backends.ErrBusy)
		}
		defer fsx.ReleaseLease(f)
		state, err := h.Repair(f)
		if err != nil {
			return false, fmt.Errorf("repair the head of %s after an interrupted in-place compaction: %w", ip.CutPath, err)
		}
		if state != ndjson.HeadUntouched {
			return true, nil
		}
		cut = f
	}
	err = h.Apply(cut)
	if errors.Is(err, fsx.ErrNoCollapse) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cut the head of %s: %w", ip.CutPath, err)
	}
	return true, nil
}
