package rotating

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// rotStagingPrefix starts the name of a staging directory beside the active
// file named base.
func rotStagingPrefix(base string) string { return "." + base + ".watcher-rot-" }

// rotOldActiveLink is the name, in the staging directory, of the hard link to
// the old active file.
const rotOldActiveLink = "old-active"

// rotFile is one existing file of the snapshot.
type rotFile struct {
	idx   int    // 0 for the active file, i for <path>.i
	name  string // its path, for messages
	entry string // its name in the set's directory
	f     *os.File
	fi    os.FileInfo
	size  int64 // size at the snapshot
	end   int64 // the passes read [0, end)
}

// rotChunk is one chunk of the new set, as pass 2 found it.
type rotChunk struct {
	file    int   // index in rotCompaction.files of its first line
	off     int64 // offset of its first line
	line    int64 // forward index of its first line in the kept region
	bytes   int64
	records int64
}

// rotStaged is one file written into the staging directory.
type rotStaged struct {
	name  string // its path, in the staging directory
	entry string // its name in the staging directory
	final string // the path it is installed at
	f     *os.File
	fi    os.FileInfo
	size  int64
	// synced is set once the file is fsynced.
	synced bool
}

// rotCompaction is one attempt at compacting the set.
type rotCompaction struct {
	r    *Set
	ds   *rotDirs // the set's directory and the state directory, open
	path string
	base string
	opts backends.CompactOptions
	rep  backends.Report

	files  []*rotFile       // existing files, oldest first
	byIdx  []os.FileInfo    // the snapshot of every name, nil where absent
	active *rotFile         // nil when the active file does not exist
	like   os.FileInfo      // mode and owner for files with no predecessor
	drop   backends.Dropped // what was dropped
	notes  []string

	// pass 1
	cutFile  int   // the kept region starts in files[cutFile] ...
	cutOff   int64 // ... at this offset
	kLines   int64 // lines in the kept region
	dropBits []uint64
	records  int64 // records seen (examined records plus unexamined lines)

	// pass 2
	chunks []rotChunk // the kept chunks, oldest first
	// chunkOverflow is set when the survivors fill more than MaxFiles
	// chunks (the oldest are dropped).
	chunkOverflow bool

	// in place (inplace.go)
	forceCopy  bool            // in place was tried and cannot run: copy
	ip         *rotInPlacePlan // nil unless in place is considered
	ipCut      *ndjson.HeadCut // the head cut of the partly dropped file, nil if none
	ipCollapse int64           // bytes the head cut collapses

	// writing
	staging     *fsx.Dir // the staging directory, open
	stagingName string   // its name in the set's directory
	placeholder string   // name of the placeholder this compaction created, if any
	staged      []*rotStaged
	journal     *rotJournal
	committed   bool // the commit journal is written: only forward from here
	crashed     bool
	appended    int64 // records appended by the writer during the compaction
	appendBytes int64

	progressDone, progressTotal int64
}

func (c *rotCompaction) progress(n int64) {
	c.progressDone += n
	if c.opts.Progress != nil {
		c.opts.Progress(c.progressDone, c.progressTotal)
	}
}

// point calls the test hook and remembers a simulated crash.
func (c *rotCompaction) point(name string) error {
	err := fsx.CrashPoint(name)
	if err != nil {
		c.crashed = true
	}
	return err
}

// run is one attempt: survey, prepare, snapshot, plan (cut and chunks), then,
// unless a dry run, write (copy, catch-up, check, commit).
func (c *rotCompaction) run(ctx context.Context) (rep backends.Report, err error) {
	c.rep = backends.Report{Target: c.r.cfg.Name, Backend: backends.KindRotating, DryRun: c.opts.DryRun}
	c.base = c.ds.base
	defer c.closeFiles()
	defer func() {
		if err != nil && !c.crashed {
			err = c.abort(ctx, err)
		}
	}()

	exists, err := c.survey()
	if err != nil {
		return c.rep, err
	}
	if !exists {
		c.rep.BeforeBytes, c.rep.AfterBytes = backends.Int64(0), backends.Int64(0)
		c.rep.Finish()
		return c.rep, nil
	}
	if !c.opts.DryRun {
		if err := c.prepare(); err != nil {
			return c.rep, err
		}
	}
	if err := c.snapshot(); err != nil {
		return c.rep, err
	}
	after, kept, err := c.plan(ctx)
	if err != nil {
		return c.rep, err
	}
	if c.ip != nil {
		ok, err := c.decideInPlace()
		if err != nil {
			return c.rep, err
		}
		if ok {
			if !c.opts.DryRun {
				if err := c.runInPlace(ctx); err != nil {
					return c.rep, err
				}
			}
			return c.finishInPlaceReport(kept), nil
		}
	}
	if c.opts.DryRun {
		return c.finish(after, kept), nil
	}
	if err := c.checkSpace(after); err != nil {
		return c.rep, err
	}
	if err := c.write(ctx); err != nil {
		return c.rep, err
	}
	return c.finish(after+c.appendBytes, kept+c.appended), nil
}

// plan reads the snapshot: it finds the retention cut (findCut) and the
// chunks of the new set (planChunks), and returns the bytes and records the
// new set will hold, before what the writer appends meanwhile.
func (c *rotCompaction) plan(ctx context.Context) (after, kept int64, err error) {
	var before int64
	for _, f := range c.files {
		before += f.size
	}
	c.rep.BeforeBytes = backends.Int64(before)
	c.progressTotal = before
	if err := c.findCut(ctx); err != nil {
		return 0, 0, err
	}
	if c.inPlaceWanted() {
		c.ip = &rotInPlacePlan{ok: true, headFiller: -1}
	}
	if err := c.planChunks(ctx); err != nil {
		return 0, 0, err
	}
	for _, ch := range c.chunks {
		after += ch.bytes
		kept += ch.records
	}
	c.progressTotal = before + after
	return after, kept, nil
}

// write stages the new set (copyChunks, then stageActive: catch-up, fsync,
// link of the old active file), checks that the writer did not rotate
// meanwhile and commits.
func (c *rotCompaction) write(ctx context.Context) error {
	if err := c.copyChunks(ctx); err != nil {
		return err
	}
	if err := c.stageActive(ctx); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	return c.commit(ctx)
}

// finish fills the report.
func (c *rotCompaction) finish(afterBytes, afterRecords int64) backends.Report {
	c.rep.BeforeRecords = c.records
	c.rep.AfterRecords = afterRecords
	c.rep.AfterBytes = backends.Int64(afterBytes)
	c.rep.Dropped = c.drop
	c.rep.AppendedDuring = c.appended
	*c.rep.BeforeBytes += c.appendBytes
	c.rep.BeforeRecords += c.appended // appended records were there before the swap too
	c.rep.Notes = append(c.rep.Notes, c.notes...)
	if c.rep.Method == "" {
		c.rep.Method = backends.MethodCopy
	}
	c.rep.Finish()
	return c.rep
}

// survey reports whether any name of the set exists, and refuses a set
// where a name is not a regular file (ErrSymlink, ErrNotRegular: a FIFO, a
// socket, a device, a directory) before anything is created.
func (c *rotCompaction) survey() (bool, error) {
	exists := false
	for i := 0; i < c.r.cfg.MaxFiles; i++ {
		fi, err := c.ds.dir.Lstat(segName(c.base, i))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		if err := fsx.RequireRegular(segName(c.path, i), fi); err != nil {
			return false, err
		}
		exists = true
	}
	return exists, nil
}

// prepare writes the prepare journal, creates the staging directory, makes
// sure the active file exists and creates the placeholder that stops the
// writer from rotating.
func (c *rotCompaction) prepare() error {
	placeholder, err := c.journalPrepare()
	if err != nil {
		return err
	}
	dir := c.ds.dir
	if err := dir.Mkdir(c.stagingName, 0o700); err != nil {
		return fmt.Errorf("create staging directory: %w", err)
	}
	staging, err := dir.OpenSubdir(c.stagingName)
	if err != nil {
		return err
	}
	c.staging = staging
	like := c.newestExisting()
	// The active file: created empty if missing, so that the writer's next
	// record lands in an inode this compaction knows (and drains).
	if _, err := dir.Lstat(c.base); errors.Is(err, os.ErrNotExist) {
		if err := createEmpty(dir, c.base, like); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if placeholder != "" {
		return c.createPlaceholder(placeholder, like)
	}
	return nil
}

// journalPrepare picks the staging directory's name and the placeholder
// (<path>.<max_files-1> when it does not exist; "" otherwise) and writes the
// prepare journal naming them, before either exists.
func (c *rotCompaction) journalPrepare() (placeholder string, err error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	dir := c.ds.dir
	c.stagingName = rotStagingPrefix(c.base) + hex.EncodeToString(rnd[:])
	if n := c.r.cfg.MaxFiles - 1; n >= 1 {
		if _, err := dir.Lstat(segName(c.base, n)); errors.Is(err, os.ErrNotExist) {
			placeholder = segName(c.base, n)
		}
	}
	c.journal = &rotJournal{Version: 1, State: rotStatePrepare, Path: c.path, Staging: dir.PathOf(c.stagingName)}
	if placeholder != "" {
		c.journal.Placeholder = dir.PathOf(placeholder)
	}
	if err := c.ds.state.WriteJSON(c.r.journalName(c.path), c.journal); err != nil {
		return "", err
	}
	return placeholder, c.point("prepare-journal")
}

// createPlaceholder creates the empty placeholder that stops the writer
// from rotating; a writer that rotated into that name just now made it a
// segment, which is fine too.
func (c *rotCompaction) createPlaceholder(placeholder string, like os.FileInfo) error {
	err := createEmpty(c.ds.dir, placeholder, like)
	switch {
	case err == nil:
		c.placeholder = placeholder
	case errors.Is(err, os.ErrExist):
		// The writer rotated into it just now: it is a segment.
	default:
		return err
	}
	return c.point("placeholder")
}

// newestExisting returns the FileInfo of the newest existing regular file
// of the set.
func (c *rotCompaction) newestExisting() os.FileInfo {
	for i := 0; i < c.r.cfg.MaxFiles; i++ {
		if fi, err := c.ds.dir.Lstat(segName(c.base, i)); err == nil && fi.Mode().IsRegular() {
			return fi
		}
	}
	return nil
}

// createEmpty creates the empty file name in d, durably, with O_EXCL and the
// mode and owner of like. An existing name is an error wrapping
// fs.ErrExist.
func createEmpty(d *fsx.Dir, name string, like os.FileInfo) error {
	f, err := d.Create(name, like)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return d.Sync()
}

// snapshot opens every existing file of the set and records name → inode,
// size.
func (c *rotCompaction) snapshot() error {
	n := c.r.cfg.MaxFiles
	c.byIdx = make([]os.FileInfo, n)
	for i := n - 1; i >= 0; i-- {
		entry := segName(c.base, i)
		f, fi, err := c.ds.dir.OpenRegular(entry, os.O_RDONLY, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		rf := &rotFile{idx: i, name: f.Name(), entry: entry, f: f, fi: fi, size: fi.Size(), end: fi.Size()}
		c.byIdx[i] = fi
		c.files = append(c.files, rf)
		if i == 0 {
			c.active = rf
		}
	}
	if c.active != nil {
		c.like = c.active.fi
	} else if len(c.files) > 0 {
		c.like = c.files[len(c.files)-1].fi
	}
	// The active file's unterminated last line is a write in flight unless the
	// file has been quiet for PartialLineGrace: then it is a crash leftover and
	// is treated like any segment's last line.
	if a := c.active; a != nil && a.size > 0 {
		l0, err := ndjson.LastLineEnd(a.f, a.size)
		if err != nil {
			return fmt.Errorf("read %s: %w", a.name, err)
		}
		if l0 < a.size && !ndjson.PartialExpired(a.fi.ModTime(), c.opts.PartialLineGrace) {
			a.end = l0
			c.notes = append(c.notes, fmt.Sprintf("%s ends in an unterminated line written %s ago: treated as a write in flight",
				a.name, time.Since(a.fi.ModTime()).Round(time.Millisecond)))
		}
	}
	return nil
}

// closeFiles closes every file and the staging directory the attempt has
// open; it may be called more than once.
func (c *rotCompaction) closeFiles() {
	for _, f := range c.files {
		if f.f != nil {
			f.f.Close()
			f.f = nil
		}
	}
	for _, s := range c.staged {
		if s.f != nil {
			s.f.Close()
			s.f = nil
		}
	}
	if c.staging != nil {
		c.staging.Close()
		c.staging = nil
	}
}

// ---- pass 1 (findCut): retention, newest first ----

func (c *rotCompaction) setDropped(bi int64) {
	w := bi >> 6
	for int64(len(c.dropBits)) <= w {
		c.dropBits = append(c.dropBits, 0)
	}
	c.dropBits[w] |= 1 << uint(bi&63)
}

func (c *rotCompaction) isDropped(bi int64) bool {
	w := bi >> 6
	return w < int64(len(c.dropBits)) && c.dropBits[w]&(1<<uint(bi&63)) != 0
}

// rotCutter offers the lines of the set, newest first, to the retention's
// cut (findCut), numbering them backward and marking the dropped ones.
type rotCutter struct {
	c    *rotCompaction
	cut  *backends.Cut
	bi   int64 // backward index of the next line
	done bool  // the cut is done: every older line is dropped
	// cutLine is where the line that ended the cut starts.
	cutLine int64
}

// offer classifies one line of files[fi] at off (its '\n' included when it
// has one) and offers it to the cut. It returns false once the cut is
// done: that line ends the kept region.
func (u *rotCutter) offer(fi int, line []byte, off int64) bool {
	c := u.c
	complete := len(line) > 0 && line[len(line)-1] == '\n'
	content := line
	if complete {
		content = line[:len(line)-1]
	}
	info := ndjson.ClassifyLine(content)
	if info.Record {
		c.records++
	}
	why := u.cut.Offer(info, int64(len(content))+1)
	if u.cut.Done() {
		c.drop.Add(why)
		c.cutFile, c.cutOff, u.cutLine = fi, off+int64(len(line)), off
		u.done = true
		return false
	}
	switch {
	case why == backends.Kept:
	case why == backends.DropInvalid && !complete:
		c.drop.Partial++
		c.setDropped(u.bi)
	default:
		c.drop.Add(why)
		c.setDropped(u.bi)
	}
	u.bi++
	return true
}

// findCut is pass 1: it walks the set newest first (the active file
// backward, then .1 backward, …) offering each line to the retention's cut
// until the cut is done. The kept region is what lies after the cut
// (cutFile, cutOff); the lines dropped inside it are marked; the lines
// older than the cut are counted, not parsed (countUnread).
func (c *rotCompaction) findCut(ctx context.Context) error {
	u := &rotCutter{c: c, cut: c.opts.Retention.NewCut(c.opts.Now)}
	c.cutFile, c.cutOff = 0, 0
	for fi := len(c.files) - 1; fi >= 0 && !u.done; fi-- {
		if err := c.offerBackward(ctx, fi, u); err != nil {
			return err
		}
	}
	c.kLines = u.bi
	if u.done {
		return c.countUnread(ctx, u.cutLine)
	}
	return nil
}

// offerBackward offers the lines of files[fi] to u, newest first, until u
// is done.
func (c *rotCompaction) offerBackward(ctx context.Context, fi int, u *rotCutter) error {
	f := c.files[fi]
	end := f.end
	// An unterminated last line first: ReadBackward wants a line boundary.
	l, err := ndjson.LastLineEnd(f.f, end)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.name, err)
	}
	if l < end {
		// Read as a line, so that a long one is never held in memory.
		tail, _, _, err := ndjson.NewReader(f.f, l, end).Next()
		if err != nil {
			return fmt.Errorf("read %s: %w", f.name, err)
		}
		if !u.offer(fi, tail, l) {
			return nil
		}
	}
	var n int64
	err = ndjson.ReadBackward(ctx, f.f, 0, l, func(line []byte, off int64) bool {
		n += int64(len(line))
		if n >= 4<<20 {
			c.progress(n)
			n = 0
		}
		return u.offer(fi, line, off)
	})
	c.progress(n)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.name, err)
	}
	return nil
}

// countUnread counts the lines older than the cut (which ends with the line
// at cutLine of files[cutFile], counted already) as dropped unread: those
// shaped like records as records (Dropped.Unexamined), the others as
// invalid.
func (c *rotCompaction) countUnread(ctx context.Context, cutLine int64) error {
	var unexamined, invalid int64
	for fi := c.cutFile; fi >= 0; fi-- {
		f := c.files[fi]
		end := f.end
		if fi == c.cutFile {
			end = cutLine // the line that ended the cut is counted already
		}
		shaped, other, err := ndjson.CountUnread(ctx, f.f, end)
		if err != nil {
			return fmt.Errorf("read %s: %w", f.name, err)
		}
		unexamined += shaped
		invalid += other
	}
	c.drop.Unexamined += unexamined
	c.drop.Invalid += invalid
	c.records += unexamined
	if unexamined > 0 {
		c.notes = append(c.notes, fmt.Sprintf("%d lines older than the retention cut were dropped unread; before_records counts those shaped like records ('{' … '}') as records", unexamined))
	}
	return nil
}

// ---- pass 2 (planChunks): chunk boundaries, oldest first ----

// forEachKept calls fn for every line of the kept region from files[fi] at
// off (a line start whose forward index is j) onward: the line (its '\n'
// included when it has one), its offset, its forward index and whether it is
// kept. fn returns false to stop.
func (c *rotCompaction) forEachKept(ctx context.Context, fi int, off, j int64, fn func(fi int, line []byte, off, j int64, kept bool) (bool, error)) error {
	for ; fi < len(c.files); fi++ {
		f := c.files[fi]
		lr := ndjson.NewReader(f.f, off, f.end)
		for {
			if j&4095 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			line, loff, _, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", f.name, err)
			}
			kept := !c.isDropped(c.kLines - 1 - j)
			more, err := fn(fi, line, loff, j, kept)
			if err != nil {
				return err
			}
			if !more {
				return nil
			}
			j++
		}
		off = 0
	}
	return nil
}

// planChunks is pass 2: it walks the kept region forward cutting the
// survivors into chunks of at most MaxBytes (a chunk holds at least one
// line) from line lengths alone, and keeps the newest MaxFiles of them; the
// records of older chunks are dropped, with a note.
func (c *rotCompaction) planChunks(ctx context.Context) error {
	maxFiles := c.r.cfg.MaxFiles
	ring := make([]rotChunk, 0, min(maxFiles, 1024))
	head := 0 // ring is full when len == maxFiles; head is the oldest then
	var total, droppedRecords int64
	var cur *rotChunk
	push := func(ch rotChunk) *rotChunk {
		total++
		if len(ring) < maxFiles {
			ring = append(ring, ch)
			return &ring[len(ring)-1]
		}
		droppedRecords += ring[head].records
		ring[head] = ch
		p := &ring[head]
		head = (head + 1) % maxFiles
		return p
	}
	err := c.forEachKept(ctx, c.cutFile, c.cutOff, 0, func(fi int, line []byte, off, j int64, kept bool) (bool, error) {
		if c.ip != nil {
			c.ip.observe(fi, line, off, kept)
		}
		if !kept {
			return true, nil
		}
		size := int64(len(line))
		if line[len(line)-1] != '\n' {
			size++
		}
		if cur == nil || cur.bytes+size > c.r.cfg.MaxBytes {
			cur = push(rotChunk{file: fi, off: off, line: j})
		}
		cur.bytes += size
		cur.records++
		return true, nil
	})
	if err != nil {
		return err
	}
	c.chunks = make([]rotChunk, 0, len(ring))
	c.chunks = append(c.chunks, ring[head:]...)
	c.chunks = append(c.chunks, ring[:head]...)
	if droppedRecords > 0 {
		c.chunkOverflow = true
		c.drop.Count += droppedRecords
		c.notes = append(c.notes, fmt.Sprintf("%d records dropped because the survivors fill more than max_files=%d chunks of max_bytes=%d (%d chunks)",
			droppedRecords, maxFiles, c.r.cfg.MaxBytes, total))
	}
	return nil
}

// ---- pass 3 (copyChunks): write the kept chunks into the staging directory ----

// finalIndex is the set index chunk ci of the kept chunks lands at.
func (c *rotCompaction) finalIndex(ci int) int { return len(c.chunks) - 1 - ci }

func (c *rotCompaction) likeFor(idx int) os.FileInfo {
	if idx < len(c.byIdx) && c.byIdx[idx] != nil {
		return c.byIdx[idx]
	}
	return c.like
}

func (c *rotCompaction) newStaged(idx int) (*rotStaged, error) {
	f, entry, err := c.staging.CreateTemp(c.base, c.likeFor(idx))
	if err != nil {
		return nil, err
	}
	s := &rotStaged{name: f.Name(), entry: entry, final: segName(c.path, idx), f: f}
	c.staged = append(c.staged, s)
	return s, nil
}

// sealStaged flushes, fsyncs and closes a staged segment.
func (c *rotCompaction) sealStaged(s *rotStaged, size int64) error {
	if s.synced {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.f.Name(), err)
	}
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", s.f.Name(), err)
	}
	s.fi, s.size, s.synced = fi, size, true
	return nil
}

// rotChunkWriter copies the kept lines into the staged files, one staged
// file per kept chunk, gathering adjacent kept lines into runs copied at
// once.
type rotChunkWriter struct {
	c  *rotCompaction
	cp *ndjson.Copier
	s  *rotStaged // the staged file being written
	ci int        // the index of its chunk in c.chunks
	// nextStart is the forward index of the first line of the next chunk,
	// -1 when s is the last.
	nextStart int64
	// A run of kept bytes [runOff, runEnd) of files[runFile] not yet
	// copied; runFile is -1 when there is none.
	runFile        int
	runOff, runEnd int64
}

// flushRun copies the pending run.
func (w *rotChunkWriter) flushRun() error {
	if w.runFile >= 0 && w.runEnd > w.runOff {
		w.cp.Src = w.c.files[w.runFile].f
		if err := w.cp.CopyRange(w.runOff, w.runEnd-w.runOff); err != nil {
			return err
		}
	}
	w.runFile = -1
	return nil
}

// nextChunk seals the staged file of the chunk just written and starts the
// next one's.
func (w *rotChunkWriter) nextChunk() error {
	c := w.c
	if err := w.flushRun(); err != nil {
		return err
	}
	if err := w.cp.Flush(); err != nil {
		return err
	}
	if err := c.sealStaged(w.s, w.cp.DstOff); err != nil {
		return err
	}
	w.ci++
	s, err := c.newStaged(c.finalIndex(w.ci))
	if err != nil {
		return err
	}
	w.s = s
	w.cp.Dst, w.cp.DstOff = s.f, 0
	w.nextStart = -1
	if w.ci+1 < len(c.chunks) {
		w.nextStart = c.chunks[w.ci+1].line
	}
	return nil
}

// line takes one line of the kept region (forEachKept's callback).
func (w *rotChunkWriter) line(fi int, line []byte, off, j int64, kept bool) (bool, error) {
	if !kept {
		return true, w.flushRun()
	}
	if j == w.nextStart {
		if err := w.nextChunk(); err != nil {
			return false, err
		}
	}
	if line[len(line)-1] != '\n' {
		// An unterminated last line that is a record: it gets its newline.
		if err := w.flushRun(); err != nil {
			return false, err
		}
		w.cp.Src = w.c.files[fi].f
		if err := w.cp.CopyRange(off, int64(len(line))); err != nil {
			return false, err
		}
		return true, w.cp.Write([]byte{'\n'})
	}
	if w.runFile == fi && w.runEnd == off {
		w.runEnd += int64(len(line))
		return true, nil
	}
	if err := w.flushRun(); err != nil {
		return false, err
	}
	w.runFile, w.runOff, w.runEnd = fi, off, off+int64(len(line))
	return true, nil
}

// copyChunks is pass 3: it copies the surviving lines of the kept chunks
// into new files of the staging directory, oldest first (an empty active
// file when nothing is kept).
func (c *rotCompaction) copyChunks(ctx context.Context) error {
	if len(c.chunks) == 0 {
		_, err := c.newStaged(0)
		return err
	}
	s, err := c.newStaged(c.finalIndex(0))
	if err != nil {
		return err
	}
	w := &rotChunkWriter{
		c:         c,
		cp:        ndjson.NewCopier(ctx, nil, s.f, ndjson.BlockSize, c.opts.WaitIO, c.progress),
		s:         s,
		nextStart: -1,
		runFile:   -1,
	}
	if len(c.chunks) > 1 {
		w.nextStart = c.chunks[1].line
	}
	first := c.chunks[0]
	if err := c.forEachKept(ctx, first.file, first.off, first.line, w.line); err != nil {
		return err
	}
	if err := w.flushRun(); err != nil {
		return err
	}
	if err := w.cp.Flush(); err != nil {
		return err
	}
	w.s.size = w.cp.DstOff
	if want := c.chunks[len(c.chunks)-1].bytes; w.s.size != want {
		return fmt.Errorf("staged %s holds %d bytes, want %d: %s changed while being compacted", w.s.f.Name(), w.s.size, want, c.path)
	}
	return nil
}

// ---- catch-up, link, check ----

// stageActive copies the records appended to the active file since the
// snapshot to the end of the new active chunk (catchUp), fsyncs everything
// staged (sealAll) and hard-links the old active file into the staging
// directory (linkOldActive).
func (c *rotCompaction) stageActive(ctx context.Context) error {
	s := c.staged[len(c.staged)-1] // the new active chunk
	if fi, err := s.f.Stat(); err == nil {
		s.size = fi.Size()
	}
	catchUp := int64(0)
	if c.active != nil {
		var err error
		catchUp, err = c.catchUp(ctx, s)
		if err != nil {
			return err
		}
	}
	if err := c.sealAll(); err != nil {
		return err
	}
	if c.active != nil {
		if err := c.linkOldActive(catchUp); err != nil {
			return err
		}
	}
	if err := c.staging.Sync(); err != nil {
		return err
	}
	if err := c.ds.dir.Sync(); err != nil {
		return err
	}
	return c.point("staged")
}

// sealAll fsyncs and closes every staged file.
func (c *rotCompaction) sealAll() error {
	for _, st := range c.staged {
		if err := c.sealStaged(st, st.size); err != nil {
			return err
		}
		if err := st.f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", st.f.Name(), err)
		}
		st.f = nil
	}
	return nil
}

// linkOldActive hard-links the old active file into the staging directory,
// checks that the link is the inode of the snapshot, and records it and
// the catch-up offset in the journal (written at the commit).
func (c *rotCompaction) linkOldActive(catchUp int64) error {
	if err := c.ds.dir.LinkTo(c.active.entry, c.staging, rotOldActiveLink); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s disappeared: %w", c.active.name, backends.ErrConcurrentRotation)
		}
		return err
	}
	fi, err := c.staging.Lstat(rotOldActiveLink)
	if err != nil {
		return err
	}
	if !os.SameFile(fi, c.active.fi) {
		return fmt.Errorf("%s is no longer the file compacted: %w", c.active.name, backends.ErrConcurrentRotation)
	}
	c.journal.OldActiveLink = c.staging.PathOf(rotOldActiveLink)
	c.journal.OldActiveDev, c.journal.OldActiveIno = fsx.InodeOf(fi)
	c.journal.CatchUp = catchUp
	return nil
}

// catchUp appends to the staged active chunk the whole lines appended to the
// old active file since the snapshot, and returns the offset after the last
// one (C): what lies past C is drained after the swap.
func (c *rotCompaction) catchUp(ctx context.Context, s *rotStaged) (int64, error) {
	a := c.active
	fi, err := a.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", a.name, err)
	}
	if fi.Size() < a.end {
		return 0, fmt.Errorf("%s shrank from %d to %d bytes (truncated by the writer): %w", a.name, a.size, fi.Size(), backends.ErrConcurrentRotation)
	}
	w := &rotAppender{f: s.f, off: s.size}
	res, err := copyWholeLines(ctx, a.f, a.end, fi.Size(), w)
	if err != nil {
		return 0, fmt.Errorf("catch up with %s: %w", a.name, err)
	}
	c.appended += res.records
	c.appendBytes += res.bytes
	s.size = w.off
	return res.next, c.point("caught-up")
}

// check verifies that every name of the set still is the file of the
// snapshot: segments unchanged, the active file the same inode, grown or not.
func (c *rotCompaction) check() error {
	for i, want := range c.byIdx {
		name := segName(c.path, i)
		fi, err := c.ds.dir.Lstat(segName(c.base, i))
		switch {
		case errors.Is(err, os.ErrNotExist):
			if want != nil {
				return fmt.Errorf("%s disappeared: %w", name, backends.ErrConcurrentRotation)
			}
			continue
		case err != nil:
			return err
		case want == nil:
			return fmt.Errorf("%s appeared: %w", name, backends.ErrConcurrentRotation)
		case !os.SameFile(fi, want):
			return fmt.Errorf("%s was replaced: %w", name, backends.ErrConcurrentRotation)
		case i > 0 && fi.Size() != want.Size():
			return fmt.Errorf("%s changed size from %d to %d: %w", name, want.Size(), fi.Size(), backends.ErrConcurrentRotation)
		}
	}
	return nil
}

// ---- commit ----

// commit writes the commit journal (journalCommit), the point past which
// the swap only goes forward, then installs the staged files and drains the
// old active file (rollForward).
func (c *rotCompaction) commit(ctx context.Context) error {
	jr := c.journalCommit()
	if err := c.ds.state.WriteJSON(c.r.journalName(c.path), jr); err != nil {
		return err
	}
	c.committed = true
	if err := c.point("commit-journal"); err != nil {
		return err
	}
	var old *os.File
	if c.active != nil {
		old = c.active.f
	}
	res, err := c.r.rollForward(ctx, c.ds, jr, old, c.staging, c.point)
	c.appended += res.records
	c.appendBytes += res.bytes
	if res.partial > 0 {
		c.drop.Partial++
		c.notes = append(c.notes, fmt.Sprintf("an unterminated line of %d bytes was left in the old active file after the swap: dropped as a crash leftover", res.partial))
	}
	if !res.leased && res.records > 0 {
		c.notes = append(c.notes, "the new active file could not be leased: records drained after the swap may follow one record written after them")
	}
	return err
}

// journalCommit fills the journal for the commit: each staged file with its
// final name and inode, the old files beyond the new set to remove, the new
// active file's inode and size.
func (c *rotCompaction) journalCommit() *rotJournal {
	jr := c.journal
	jr.State = rotStateCommit
	for _, s := range c.staged {
		dev, ino := fsx.InodeOf(s.fi)
		jr.Installs = append(jr.Installs, rotInstall{Staged: s.name, Final: s.final, Dev: dev, Ino: ino, Size: s.size})
	}
	jr.NewActiveSize = c.staged[len(c.staged)-1].size
	_, jr.NewActiveIno = fsx.InodeOf(c.staged[len(c.staged)-1].fi)
	for i := len(c.chunks); i < c.r.cfg.MaxFiles; i++ {
		if i == 0 {
			continue // the active file is always installed
		}
		if fi := c.byIdx[i]; fi != nil {
			dev, ino := fsx.InodeOf(fi)
			jr.Removes = append(jr.Removes, rotRemove{Path: segName(c.path, i), Dev: dev, Ino: ino})
		}
	}
	return jr
}

// abort undoes an attempt that failed before its commit point, or completes
// one that failed after it. It returns err, annotated.
func (c *rotCompaction) abort(ctx context.Context, err error) error {
	if c.opts.DryRun || c.journal == nil {
		return err
	}
	if c.committed {
		if rerr := c.r.recoverLocked(context.WithoutCancel(ctx), c.ds); rerr != nil {
			return fmt.Errorf("%w (and completing the swap failed: %v; it is completed by the next Recover)", err, rerr)
		}
		return err
	}
	c.closeFiles()
	c.files = nil
	if cerr := c.undoPrepare(); cerr != nil {
		return fmt.Errorf("%w (cleanup: %w)", err, cerr)
	}
	return err
}

// undoPrepare removes what prepare created: the staging directory, the
// placeholder (if still empty) and the journal.
func (c *rotCompaction) undoPrepare() error {
	c.closeFiles()
	var errs []string
	if err := c.ds.dir.RemoveAll(c.stagingName); err != nil {
		errs = append(errs, err.Error())
	}
	if c.placeholder != "" {
		if err := removeIfEmpty(c.ds.dir, c.placeholder); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if err := c.ds.state.RemoveDurably(c.r.journalName(c.path)); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	c.journal = nil
	return nil
}

// removeIfEmpty removes name from d if it is an empty regular file: a
// placeholder (or an empty segment: nothing is lost either way).
func removeIfEmpty(d *fsx.Dir, name string) error {
	fi, err := d.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 {
		return nil
	}
	if err := d.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove placeholder: %w", err)
	}
	return d.Sync()
}

// rotAppender writes at a tracked offset of a file.
type rotAppender struct {
	f       *os.File
	off     int64
	checked bool // the file has been seen to have one link
}

func (w *rotAppender) Write(p []byte) (int, error) {
	if !w.checked {
		// Never write at an offset into a file a backup snapshot links.
		if err := fsx.RefuseLinked(w.f); err != nil {
			return 0, err
		}
		w.checked = true
	}
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}
