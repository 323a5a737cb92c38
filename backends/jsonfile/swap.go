package jsonfile

// The swap of a json compaction: how the new file takes the target's place
// while a writer keeps appending, and how an interrupted swap is finished.
//
// # Protocol
//
// The compaction has written the new content to a temporary file T (the
// survivors of the old inode O and the complete lines appended to O since,
// up to offset off of O). Each step keeps an invariant that holds at every
// instant, whatever kills the process:
//
//  1. fsync T; link O to the old link L (".<base>.watcher-old"). The target
//     path P holds O, which is whole.
//  2. Open T once more (the only descriptor on it) and take a write lease on
//     it; write the journal J (O's and T's inodes, off, NewEnd = T's size,
//     Leased) durably. P holds O; recovery sees P = O and removes L and J.
//  3. rename(T, P). P holds T = O's records settled up to off, in order. A
//     writer's open of P now waits in the kernel on the lease; a writer that
//     opened O before the rename may still append to O, past off.
//  4. Drain: what lands in O past J.Offset goes to T in whole lines, one
//     chunk at a time, at T's offset J.NewEnd (T's own bytes: nobody else
//     can have written T while the lease is held):
//     a. J.Slot = {O[From, To), At = NewEnd} (journal replaced, not fsynced:
//     it must follow the rename within moments);
//     b. T is extended to At+len by one write of one byte, a newline at
//     At+len-1 (the slot is reserved: zeros, then the newline; a one-byte
//     write either happened or not);
//     c. J.Slot.Reserved = true;
//     d. the chunk is copied from O into the slot, a block at a time
//     (pwrite, or copy_file_range: a long line is never held in memory);
//     then Offset = To, NewEnd += len.
//     After a kill at any of these instants, recovery knows the slot
//     exactly: before (b) T's byte At is a writer's (never NUL: JSON text)
//     or T ends at At; after (b) the slot is NULs and a newline, and it is
//     rewritten whole from O (idempotent). Nothing is torn or written twice
//     once recovery has run, and writers that appended to T after the kill
//     did so after the slot, on lines of their own. Until recovery runs, a
//     reader sees the slot as one unreadable line (NULs, or the start of
//     the chunk then NULs), which Papyra's reader skips.
//  5. No sooner than drainSettle after the rename, when no process has O
//     open for writing (a read lease can be taken on it; where that cannot
//     be told, when a writer waits on T's lease: it is done with O), a last
//     pass measures O after that check and takes the rest, and counts only
//     if the check still holds and O has not grown; fsync T; remove L; fsync
//     the directory; remove J.
//
// Recovery (every compaction and every start runs it first), with J present:
//
//   - L missing: the drain finished; J is removed.
//   - P holds O: the rename did not happen; L is removed (and, for a swap of
//     a recovery rewrite, the journal it completes is put back).
//   - P holds T: the reserved slot is filled; then, once nobody has O open
//     for writing, if O holds nothing past Offset, L and J are removed.
//     Otherwise lines of O are missing from T, and writers may have
//     appended to T after the kill (past NewEnd): the missing lines belong
//     at NewEnd, before those. Recovery rewrites the file as
//     T[0, NewEnd) + O[Offset, end) + T[NewEnd, …) with this same protocol
//     (its journal carries J as Prev: J still holds if that swap does not
//     happen, and L is obsolete once it has).
//
// Without leases (NFS; no CAP_LEASE and not the file's owner) writers may
// append to T during the drain, so nothing can be reserved: chunks are
// appended with O_APPEND, the journal names the chunk, and recovery searches
// T for it before appending it again. Order is then not guaranteed.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// jsonJournalVersion is the version of the journal this code writes.
// Version 1 journals (appended drain chunks, no reservation) are still
// recovered.
const jsonJournalVersion = 2

// jsonJournal is the intent journal of a swap, in the state directory.
type jsonJournal struct {
	Version int    `json:"version"`
	Target  string `json:"target"`
	Path    string `json:"path"`
	OldLink string `json:"old_link"`
	Temp    string `json:"temp"`
	OldDev  uint64 `json:"old_dev"`
	OldIno  uint64 `json:"old_ino"`
	NewDev  uint64 `json:"new_dev"`
	NewIno  uint64 `json:"new_ino"`
	// Offset: the bytes of the old inode before it are in the new file.
	Offset int64 `json:"offset"`
	// NewEnd: the new file's bytes before it are the compaction's own
	// (survivors, caught-up and drained lines); what follows was written by
	// writers after the compaction stopped holding the lease.
	NewEnd int64 `json:"new_end"`
	// Leased: the new file carried the compaction's write lease, so no
	// writer wrote to it before NewEnd.
	Leased bool `json:"leased"`
	// Slot is the drain chunk in flight, if any.
	Slot *drainSlot `json:"slot,omitempty"`
	// Prev is the journal of the swap that this one repairs: it still
	// holds if this swap did not happen, and its old link is obsolete once
	// this swap has happened.
	Prev *jsonJournal `json:"prev,omitempty"`
	// Settled, in a Prev: the repairing swap's new file holds the old
	// link's bytes up to here.
	Settled int64 `json:"settled,omitempty"`

	// Version 1: the bytes [Offset, DrainTo) of the old inode (plus a
	// newline when DrainNewline) were being appended to the new file, which
	// was NewSize bytes long just before.
	DrainTo      int64 `json:"drain_to,omitempty"`
	DrainNewline bool  `json:"drain_newline,omitempty"`
	NewSize      int64 `json:"new_size,omitempty"`
}

// drainSlot is a chunk of the old file on its way into the new one.
type drainSlot struct {
	// From and To: the chunk is the old file's bytes [From, To), plus a
	// newline when Newline (an unterminated last fragment).
	From    int64 `json:"from"`
	To      int64 `json:"to"`
	Newline bool  `json:"newline,omitempty"`
	// At is the chunk's offset in the new file (with Appended, the new
	// file's size just before the append: the chunk is at or after it).
	At int64 `json:"at"`
	// Reserved: the new file has been extended to At+size() for the chunk.
	Reserved bool `json:"reserved,omitempty"`
	// Appended: written with O_APPEND, without a lease.
	Appended bool `json:"appended,omitempty"`
}

// size is the chunk's length in the new file.
func (s *drainSlot) size() int64 {
	if s.Newline {
		return s.To - s.From + 1
	}
	return s.To - s.From
}

// nextLinkIndex is the index of the old link name for a swap that repairs
// j's: one past j's own, so that it never meets a link still in use.
func (j *jsonJournal) nextLinkIndex() int {
	if j == nil {
		return 0
	}
	base := filepath.Base(j.Path)
	rest, _ := strings.CutPrefix(filepath.Base(j.OldLink), oldLinkPrefix(base))
	n, _ := strconv.Atoi(strings.TrimPrefix(rest, "."))
	return n + 1
}

// removeStaleLink removes name when it is a link to the file fi that an
// interrupted attempt made before it wrote its journal; any other file
// there is left alone, and the swap fails.
func removeStaleLink(dir *fsx.Dir, name string, fi os.FileInfo) error {
	li, err := dir.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fsx.SameInode(li, fi) {
		return fmt.Errorf("%s exists and is not the target: left for inspection", dir.PathOf(name))
	}
	return dir.RemoveDurably(name)
}

// oldLinkPrefix is the name prefix of the old links of the file base.
func oldLinkPrefix(base string) string { return "." + base + ".watcher-old" }

// oldLinkName is the name the old inode is linked to during a swap; a swap
// that repairs an interrupted one (depth > 0) uses its own name.
func oldLinkName(path string, depth int) string {
	name := oldLinkPrefix(filepath.Base(path))
	if depth > 0 {
		name += "." + strconv.Itoa(depth)
	}
	return filepath.Join(filepath.Dir(path), name)
}

// isOldLinkName reports whether name is an old link of the file base.
func isOldLinkName(name, base string) bool {
	p := oldLinkPrefix(base)
	if name == p {
		return true
	}
	rest, ok := strings.CutPrefix(name, p+".")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 10, 16)
	return err == nil
}

// jsonFiles are the directories of one operation on a json target, held
// open from its start to its end: every open, create, link, rename and
// unlink is relative to them, so that a directory renamed away and replaced
// (by a symbolic link to somewhere else, say) meanwhile redirects nothing.
type jsonFiles struct {
	dir   *fsx.Dir // the target file's directory
	base  string   // the target file's name in dir
	state *fsx.Dir // the state directory; dir itself when none is configured
	// journal and lock are the names of the target's journal and lock in
	// state; headcut is the journal of an in-place compaction.
	journal, lock, headcut string
}

// openFiles opens the directory of the target file at path and, with
// withState, the state directory (created if missing). A missing target
// directory is an error wrapping os.ErrNotExist.
func (j *File) openFiles(path string, withState bool) (*jsonFiles, error) {
	dirPath, base := filepath.Split(path)
	// The directory's own name is a link only where follow_symlinks says
	// so (otherwise a link swapped in for it would redirect the whole
	// operation); it is resolved once, here, and held.
	dir, err := fsx.OpenDir(filepath.Clean(dirPath), j.cfg.FollowSymlinks)
	if err != nil {
		return nil, err
	}
	f := &jsonFiles{dir: dir, base: base, journal: filepath.Base(j.journalPath), lock: filepath.Base(j.lockPath),
		headcut: filepath.Base(j.headcutPath)}
	switch {
	case !withState:
	case j.cfg.StateDir == "" && filepath.Clean(j.stateDir) == filepath.Clean(dirPath):
		f.state = dir
	default:
		if f.state, err = fsx.OpenStateDir(j.stateDir); err != nil {
			dir.Close()
			return nil, err
		}
	}
	return f, nil
}

func (f *jsonFiles) close() {
	if f.state != nil && f.state != f.dir {
		f.state.Close()
	}
	f.dir.Close()
}

// swapIn puts tmp in place of the target, whose current inode c.src is
// settled into tmp up to off, and drains what writers add to the old inode
// after the rename (steps 1 to 5 of the protocol). prev, when not nil, is the
// journal of an interrupted swap that this one repairs.
func (c *compaction) swapIn(ctx context.Context, tmp *os.File, tmpInfo os.FileInfo, off int64, prev *jsonJournal) (drainResult, error) {
	var dr drainResult
	dir, state := c.files.dir, c.files.state
	if err := c.checkTarget(off); err != nil {
		return dr, err
	}
	oldLink := oldLinkName(c.path, prev.nextLinkIndex())
	linkName := filepath.Base(oldLink)
	if err := removeStaleLink(dir, linkName, c.srcInfo); err != nil {
		return dr, err
	}
	if err := dir.Link(c.files.base, linkName); err != nil {
		return dr, err
	}
	c.linked = true
	defer func() {
		if c.linked && !c.swapped && !c.crashed {
			dir.Remove(linkName)
		}
	}()
	if li, err := dir.Lstat(linkName); err != nil || !fsx.SameInode(li, c.srcInfo) {
		return dr, fmt.Errorf("%s: %w", c.path, backends.ErrTargetReplaced)
	}
	if err := c.crash("linked"); err != nil {
		return dr, err
	}
	// The new file is written through one descriptor that holds a write
	// lease across the rename and the drain: a writer's open of the path
	// waits in the kernel until the drain is over, so drained records stay
	// ahead of every later record. (A write lease needs the only open
	// descriptor of the file, hence the reopen.)
	newf, nfi, err := dir.OpenRegular(c.tmpName, os.O_RDWR, 0)
	if err != nil {
		return dr, err
	}
	defer newf.Close()
	if !fsx.SameInode(nfi, tmpInfo) {
		return dr, fmt.Errorf("%s changed under the compaction: %w", dir.PathOf(c.tmpName), backends.ErrTargetReplaced)
	}
	tmp.Close()
	d := &drainer{old: c.src, newf: newf, dir: dir, base: c.files.base, state: state, journal: c.files.journal,
		leased: leasesUsable && fsx.TakeLease(newf)}
	defer d.close()
	if !d.leased {
		if err := d.openAppend(c.tmpName); err != nil {
			return dr, err
		}
	}
	oldDev, oldIno := fsx.InodeOf(c.srcInfo)
	newDev, newIno := fsx.InodeOf(tmpInfo)
	jr := jsonJournal{
		Version: jsonJournalVersion, Target: c.j.cfg.Name, Path: c.path, OldLink: oldLink, Temp: dir.PathOf(c.tmpName),
		OldDev: oldDev, OldIno: oldIno, NewDev: newDev, NewIno: newIno, Offset: off,
		NewEnd: tmpInfo.Size(), Leased: d.leased, Prev: prev,
	}
	d.jr = &jr
	if err := state.WriteJSON(c.files.journal, &jr); err != nil {
		return dr, err
	}
	defer func() {
		if !c.swapped && !c.crashed {
			if prev != nil {
				state.WriteJSON(c.files.journal, prev)
			} else {
				state.RemoveDurably(c.files.journal)
			}
		}
	}()
	if err := c.crash("journaled"); err != nil {
		return dr, err
	}
	if err := c.checkTarget(off); err != nil {
		return dr, err
	}
	if err := dir.Rename(c.tmpName, c.files.base); err != nil {
		return dr, err
	}
	c.swapped = true
	if err := c.crash("renamed"); err != nil {
		return dr, err
	}
	// Drain: finish even when ctx is cancelled; the swap is done. The
	// directory is fsynced after the first drain pass, so that records that
	// reached the old file just before the rename are moved at once.
	dr, err = d.run(context.WithoutCancel(ctx), func() error {
		if err := dir.Sync(); err != nil {
			return err
		}
		return c.crash("dir-synced")
	})
	if err != nil {
		c.crashed = c.crashed || dr.crashed
		return dr, err
	}
	if err := c.crash("drained"); err != nil {
		return dr, err
	}
	if err := newf.Sync(); err != nil {
		return dr, fmt.Errorf("sync %s: %w", c.path, err)
	}
	if err := removeObsoleteLinks(dir, prev); err != nil {
		return dr, err
	}
	if err := dir.Remove(linkName); err != nil && !errors.Is(err, os.ErrNotExist) {
		return dr, err
	}
	if err := dir.Sync(); err != nil {
		return dr, err
	}
	if err := c.crash("unlinked"); err != nil {
		return dr, err
	}
	return dr, state.RemoveDurably(c.files.journal)
}

// leasesUsable can be cleared by tests to run the protocol as on a
// filesystem without leases.
var leasesUsable = true

// drainResult is what a drain moved.
type drainResult struct {
	records  int64 // records appended
	bytes    int64 // bytes of the old inode consumed
	written  int64 // bytes written to the new file
	fragment bool  // an unterminated fragment was appended with a newline
	crashed  bool
}

// drainer moves what lands in the old inode past jr.Offset into the new
// file (step 4 of the protocol).
type drainer struct {
	old  *os.File
	newf *os.File // read-write, not O_APPEND: slots are written at their offset
	// appendf is the new file opened with O_APPEND, used where no lease is
	// held.
	appendf *os.File
	// cp copies chunks from old into reserved slots of newf.
	cp     *ndjson.Copier
	leased bool
	jr     *jsonJournal
	// dir and base: the target's directory and name; state and journal:
	// the journal's.
	dir, state    *fsx.Dir
	base, journal string
}

// openAppend gives up the lease and opens the new file, named name in the
// target's directory, once more, with O_APPEND.
func (d *drainer) openAppend(name string) error {
	if d.leased {
		fsx.ReleaseLease(d.newf)
		d.leased, d.jr.Leased = false, false
	}
	f, a, err := d.dir.OpenRegular(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	b, err := d.newf.Stat()
	if err != nil || !fsx.SameInode(a, b) {
		f.Close()
		return fmt.Errorf("%s changed during the swap: %w", d.dir.PathOf(name), backends.ErrTargetReplaced)
	}
	d.appendf = f
	return nil
}

func (d *drainer) close() {
	if d.leased {
		fsx.ReleaseLease(d.newf)
	}
	if d.appendf != nil {
		d.appendf.Close()
	}
}

// run drains until no writer can add to the old inode any more: no process
// has it open for writing (checked with a read lease; nobody can open it by
// name since the rename), or, where that cannot be told, a writer waits on
// the new file's lease (it is done with the old file) or the old file has
// been quiet for drainQuiet. A writer that keeps it open is waited for up to
// drainMax.
//
// Each pass decides whether it is the last before it measures the old file:
// a writer that appends and closes in between is then inside the measured
// size. Measured first, its line could land past the size the last pass
// drains to, and be lost with the old inode. A last pass is confirmed
// afterwards (still nobody writing, size unchanged); and no pass is the last
// before drainSettle has passed since the rename, so that an open of the
// path that resolved to the old inode just before the rename has completed
// (and is seen) by then.
func (d *drainer) run(ctx context.Context, afterFirst func() error) (drainResult, error) {
	var dr drainResult
	start := wallNow()
	deadline := start.Add(drainMax)
	lastSize, lastChange := int64(-1), start
	for {
		if err := ctx.Err(); err != nil {
			return dr, err
		}
		if err := fsx.CrashPoint("drain-pass"); err != nil {
			dr.crashed = true
			return dr, err
		}
		final, known := fsx.WritersGone(d.old, d.newf, d.leased)
		fi, err := d.old.Stat()
		if err != nil {
			return dr, err
		}
		size, now := fi.Size(), wallNow()
		if size != lastSize {
			lastSize, lastChange = size, now
		}
		settled := now.Sub(start) >= drainSettle
		timeUp := now.After(deadline)
		if known {
			final = (final && settled) || timeUp
		} else {
			final = timeUp || now.Sub(lastChange) >= drainQuiet
		}
		if err := d.pass(size, final, &dr); err != nil {
			return dr, err
		}
		if afterFirst != nil {
			if err := afterFirst(); err != nil {
				dr.crashed = true
				return dr, err
			}
			afterFirst = nil
		}
		if final && d.jr.Offset >= size {
			if !known || d.stillFrozen(size) {
				return dr, nil
			}
			if timeUp {
				slog.Warn("a writer still had the old file open when the drain ended; what it writes from now on is lost",
					"path", d.jr.Path, "old_file", d.jr.OldLink, "waited", drainMax)
				return dr, nil
			}
		}
		time.Sleep(pollInterval)
	}
}

// stillFrozen confirms a last pass that drained the old file up to size:
// nothing has it open for writing and it is still size bytes long.
func (d *drainer) stillFrozen(size int64) bool {
	final, known := fsx.WritersGone(d.old, d.newf, d.leased)
	if !final || !known {
		return false
	}
	fi, err := d.old.Stat()
	return err == nil && fi.Size() == size
}

// pass moves the old file's whole lines in [jr.Offset, size) into the new
// file, chunk by chunk; on a final pass an unterminated last fragment goes
// too, with a newline.
func (d *drainer) pass(size int64, final bool, dr *drainResult) error {
	// Each chunk is whole lines of the old file, [from, to): at least a
	// block of them, or one line longer than that. The reader hands a long
	// line out as a mapping it does not read; the chunk's bytes are copied
	// from the old file by range when it is put.
	lr := ndjson.NewReader(d.old, d.jr.Offset, size)
	for d.jr.Offset < size {
		from := d.jr.Offset
		to, newline := from, false
		var recs int64
		for to-from < int64(ndjson.BlockSize) {
			line, off, complete, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if !complete {
				// An unterminated fragment is final only once the old
				// file is quiet (or time is up).
				if to == from && final {
					to, newline = off+int64(len(line)), true
				}
				break
			}
			if ndjson.ClassifyLine(line).Record {
				recs++
			}
			to = off + int64(len(line))
		}
		if to == from {
			return nil
		}
		if err := d.put(from, to, newline); err != nil {
			dr.crashed = errors.Is(err, fsx.ErrSimulatedCrash)
			return err
		}
		dr.records += recs
		dr.bytes += to - from
		dr.written += to - from
		if newline {
			dr.written++
		}
		dr.fragment = dr.fragment || newline
	}
	return nil
}

// writeJournal replaces the journal without fsync: the drain must follow the
// rename within moments (writers wait on the lease meanwhile). A kill leaves
// the update in the page cache; after a power loss an older version may come
// back, and what was drained since is then drained again (more, never less).
func (d *drainer) writeJournal() error {
	data, err := json.Marshal(d.jr)
	if err != nil {
		return err
	}
	return d.state.WriteFileReplace(d.journal, data, false)
}

// put moves the chunk old[from, to) (plus a newline) into the new file.
// Into a reserved slot it is copied from the old file a block at a time:
// however long the chunk (one long line), it is never held in memory, and a
// kill between two pieces leaves a reserved slot that recovery rewrites
// whole. Without a lease the chunk must reach the new file in one append (a
// writer's line could land between two pieces), so it is read into memory
// first: there, a line that arrives during the drain is held whole.
func (d *drainer) put(from, to int64, newline bool) error {
	jr := d.jr
	if d.leased {
		// The kernel takes a lease back after lease-break-time: if a writer
		// got to the new file, nothing can be reserved any more.
		if fi, err := d.newf.Stat(); err != nil || fi.Size() != jr.NewEnd {
			slog.Warn("the write lease on the new file was broken during the drain; record order is no longer guaranteed",
				"path", jr.Path)
			if err := d.openAppend(d.base); err != nil {
				return err
			}
		}
	}
	if !d.leased {
		chunk, err := readChunk(d.old, from, to, newline)
		if err != nil {
			return err
		}
		fi, err := d.appendf.Stat()
		if err != nil {
			return err
		}
		jr.Slot = &drainSlot{From: from, To: to, Newline: newline, At: fi.Size(), Appended: true}
		if err := d.writeJournal(); err != nil {
			return err
		}
		if err := fsx.CrashPoint("drain-journaled"); err != nil {
			return err
		}
		if _, err := d.appendf.Write(chunk); err != nil {
			return fmt.Errorf("append to %s: %w", jr.Path, err)
		}
		if err := fsx.CrashPoint("drain-written"); err != nil {
			return err
		}
		jr.Offset, jr.Slot = to, nil
		return nil
	}
	slot := &drainSlot{From: from, To: to, Newline: newline, At: jr.NewEnd}
	jr.Slot = slot
	if err := d.writeJournal(); err != nil {
		return err
	}
	if err := fsx.CrashPoint("drain-journaled"); err != nil {
		return err
	}
	if err := reserveSlot(d.newf, slot); err != nil {
		return fmt.Errorf("reserve %d bytes in %s: %w", slot.size(), jr.Path, err)
	}
	if err := fsx.CrashPoint("drain-reserved"); err != nil {
		return err
	}
	slot.Reserved = true
	if err := d.writeJournal(); err != nil {
		return err
	}
	if err := fsx.CrashPoint("drain-reservation-journaled"); err != nil {
		return err
	}
	if err := fsx.RefuseLinked(d.newf); err != nil {
		return err
	}
	if d.cp == nil {
		d.cp = ndjson.NewCopier(context.Background(), d.old, d.newf, ndjson.BlockSize, nil, nil)
	}
	if err := fillSlot(d.cp, slot, true); err != nil {
		return err
	}
	if err := fsx.CrashPoint("drain-written"); err != nil {
		return err
	}
	// The next journal update records this; until then recovery rewrites
	// the slot with the same bytes.
	jr.Offset, jr.NewEnd, jr.Slot = to, slot.At+slot.size(), nil
	return nil
}

// readChunk returns the old file's bytes [from, to), plus a newline.
func readChunk(old *os.File, from, to int64, newline bool) ([]byte, error) {
	n := to - from
	chunk := make([]byte, n, n+1)
	if m, err := old.ReadAt(chunk, from); int64(m) < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %s at %d: %w", old.Name(), from, err)
	}
	if newline {
		chunk = append(chunk, '\n')
	}
	return chunk, nil
}

// fillSlot writes the reserved slot s: the bytes [s.From, s.To) of cp.Src
// copied to cp.Dst at s.At a block at a time (a crash point, with
// crashPoints, between two blocks: "drain-slot-piece"), then its newline.
// The newline is there already (the reservation wrote it); it is written
// again so that a slot is whole after this whatever it held.
func fillSlot(cp *ndjson.Copier, s *drainSlot, crashPoints bool) error {
	cp.DstOff = s.At
	step := int64(ndjson.BlockSize)
	for off := s.From; off < s.To; off += step {
		if off > s.From && crashPoints {
			if err := fsx.CrashPoint("drain-slot-piece"); err != nil {
				return err
			}
		}
		if err := cp.CopyRange(off, min(step, s.To-off)); err != nil {
			return fmt.Errorf("write to %s: %w", cp.Dst.Name(), err)
		}
		if err := cp.Flush(); err != nil {
			return fmt.Errorf("write to %s: %w", cp.Dst.Name(), err)
		}
	}
	if s.Newline {
		if _, err := cp.Dst.WriteAt([]byte{'\n'}, s.At+s.size()-1); err != nil {
			return fmt.Errorf("write to %s: %w", cp.Dst.Name(), err)
		}
	}
	return nil
}

// reserveSlot extends f over the slot with one write of one byte, the
// slot's last: a newline. A write that small is never torn, and the bytes
// before it read as zeros (a hole). The newline keeps a writer's line
// appended after the slot on a line of its own, even before the chunk is
// written.
func reserveSlot(f *os.File, s *drainSlot) error {
	_, err := f.WriteAt([]byte{'\n'}, s.At+s.size()-1)
	return err
}

// isReservedSlot reports whether b, the bytes of a slot that may have been
// reserved, is a reserved slot that nothing was written to yet.
func isReservedSlot(b []byte) bool {
	return len(b) > 0 && b[len(b)-1] == '\n' && allZero(b[:len(b)-1])
}

// Recover completes or rolls back an interrupted compaction and removes its
// leftovers; see the comment at the top of swap.go.
func (j *File) Recover(ctx context.Context) error {
	path, err := j.resolve()
	if err != nil {
		return err
	}
	files, err := j.openFiles(path, true)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no directory: nothing to recover
	}
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer files.close()
	lock, err := files.state.TryLock(files.lock)
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer lock.Unlock()
	return j.recoverLocked(ctx, files)
}

// recoverLocked is Recover, with the target's lock held.
func (j *File) recoverLocked(ctx context.Context, files *jsonFiles) error {
	if err := j.recoverHeadCut(files); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	var jr jsonJournal
	found, err := files.state.ReadJSON(files.journal, &jr)
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	target := files
	if found && jr.Path != "" && jr.Path != files.dir.PathOf(files.base) {
		// The journal is of the path the target had when it was written.
		other, err := j.openFiles(jr.Path, false)
		if err != nil {
			return fmt.Errorf("json target %s: recover %s: %w", j.cfg.Name, jr.Path, err)
		}
		defer other.dir.Close()
		other.state, other.journal, other.lock, other.headcut = files.state, files.journal, files.lock, files.headcut
		target = other
	}
	if found {
		if err := j.recoverJournal(ctx, target, &jr); err != nil {
			return fmt.Errorf("json target %s: recover %s: %w", j.cfg.Name, target.dir.PathOf(target.base), err)
		}
	} else if err := removeUnjournaledLinks(j.cfg.Name, target); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	if err := target.dir.RemoveTemps(target.base); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	// A kill while the journal itself was being written leaves its temp.
	if err := files.state.RemoveTemps(files.journal); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	return nil
}

// removeUnjournaledLinks removes old links left by a crash that came before
// the journal was written (the swap did not happen): those that are the
// target's own inode. Any other is left in place, with a warning: it may be
// the only copy of some data.
func removeUnjournaledLinks(target string, files *jsonFiles) error {
	entries, err := files.dir.ReadDir()
	if err != nil {
		return err
	}
	cur, curErr := files.dir.Lstat(files.base)
	for _, e := range entries {
		if !isOldLinkName(e.Name(), files.base) {
			continue
		}
		li, err := files.dir.Lstat(e.Name())
		if err != nil {
			continue
		}
		if curErr == nil && fsx.SameInode(cur, li) {
			if err := files.dir.RemoveDurably(e.Name()); err != nil {
				return err
			}
			continue
		}
		slog.Warn("left in place: old file of an interrupted compaction that is not the target",
			"target", target, "path", files.dir.PathOf(e.Name()))
	}
	return nil
}

// inodeIs reports whether fi is the file dev/ino.
func inodeIs(fi os.FileInfo, dev, ino uint64) bool {
	d, i := fsx.InodeOf(fi)
	return d == dev && i == ino
}

func (j *File) recoverJournal(ctx context.Context, files *jsonFiles, jr *jsonJournal) error {
	dir, state := files.dir, files.state
	for {
		link := filepath.Base(jr.OldLink)
		li, err := dir.Lstat(link)
		if errors.Is(err, os.ErrNotExist) {
			// The drain finished: the old link goes last, but for the
			// journal.
			if err := removeObsoleteLinks(dir, jr.Prev); err != nil {
				return err
			}
			return state.RemoveDurably(files.journal)
		}
		if err != nil {
			return err
		}
		cur, err := dir.Lstat(files.base)
		switch {
		case err == nil && inodeIs(cur, jr.NewDev, jr.NewIno):
			// The swap happened.
			if jr.Prev != nil {
				if err := removeObsoleteLinks(dir, jr.Prev); err != nil {
					return err
				}
				jr.Prev = nil
				if err := state.WriteJSON(files.journal, jr); err != nil {
					return err
				}
			}
			return j.finishSwap(ctx, files, jr)
		case err == nil && fsx.SameInode(cur, li):
			// The swap did not happen.
			if err := dir.RemoveDurably(link); err != nil {
				return err
			}
			if jr.Prev == nil {
				return state.RemoveDurably(files.journal)
			}
			// It was the repair of an earlier swap, which still holds.
			if err := state.WriteJSON(files.journal, jr.Prev); err != nil {
				return err
			}
			jr = jr.Prev
		default:
			slog.Warn("the target was replaced or removed during an interrupted compaction; its old file is left in place",
				"target", jr.Target, "path", jr.Path, "old_file", jr.OldLink)
			return state.RemoveDurably(files.journal)
		}
	}
}

// removeObsoleteLinks removes the old links of the swaps that a completed
// swap repaired: their content is in the target. One that grew past what was
// settled from it is left in place, with a warning.
func removeObsoleteLinks(dir *fsx.Dir, prev *jsonJournal) error {
	for p := prev; p != nil; p = p.Prev {
		link := filepath.Base(p.OldLink)
		fi, err := dir.Lstat(link)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Size() > max(p.Offset, p.Settled) {
			slog.Warn("left in place: old file of an interrupted compaction that was written to after it was settled",
				"target", p.Target, "path", p.OldLink, "settled_bytes", max(p.Offset, p.Settled), "size", fi.Size())
			continue
		}
		if err := dir.RemoveDurably(link); err != nil {
			return err
		}
	}
	return nil
}

// finishSwap completes a swap that happened: the drain slot in flight is
// settled, and what is left in the old file is put where it belongs.
func (j *File) finishSwap(ctx context.Context, files *jsonFiles, jr *jsonJournal) error {
	dir, link := files.dir, filepath.Base(jr.OldLink)
	old, _, err := dir.OpenRegular(link, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer old.Close()
	newf, nfi, err := dir.OpenRegular(files.base, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer newf.Close()
	if !inodeIs(nfi, jr.NewDev, jr.NewIno) {
		return fmt.Errorf("%s changed during recovery: %w", jr.Path, backends.ErrTargetReplaced)
	}
	if jr.Version < 2 {
		// A version 1 drain appended its chunks.
		if jr.DrainTo > jr.Offset {
			jr.Slot = &drainSlot{From: jr.Offset, To: jr.DrainTo, Newline: jr.DrainNewline, At: jr.NewSize, Appended: true}
		}
		jr.Version, jr.DrainTo, jr.DrainNewline, jr.NewSize = jsonJournalVersion, 0, false, 0
	}
	if jr.Slot != nil {
		if err := settleSlot(old, newf, jr); err != nil {
			return err
		}
		if err := files.state.WriteJSON(files.journal, jr); err != nil {
			return err
		}
	}
	// A writer that opened the old file before the rename may still have
	// it open: wait for it, as the drain does.
	waitOldWriters(ctx, old)
	fi, err := old.Stat()
	if err != nil {
		return err
	}
	if jr.Offset < fi.Size() {
		if jr.Leased {
			slog.Info("recovery: putting lines of an interrupted drain back in order",
				"target", jr.Target, "path", jr.Path, "bytes", fi.Size()-jr.Offset)
			// Our own descriptor open for writing would look like a
			// writer to the rewrite's drain.
			newf.Close()
			return j.spliceRewrite(ctx, files, jr, old, fi.Size())
		}
		// Without a lease writers have appended to the new file all along:
		// order was never kept; append the rest.
		d := &drainer{old: old, newf: newf, jr: jr, dir: dir, base: files.base, state: files.state, journal: files.journal}
		defer d.close()
		if err := d.openAppend(files.base); err != nil {
			return err
		}
		if _, err := d.run(ctx, nil); err != nil {
			return err
		}
	}
	if err := newf.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", jr.Path, err)
	}
	if err := dir.RemoveDurably(link); err != nil {
		return err
	}
	return files.state.RemoveDurably(files.journal)
}

// waitOldWriters waits, up to drainMax, until no process has old open for
// writing, or (without leases) until it has been quiet for drainQuiet.
func waitOldWriters(ctx context.Context, old *os.File) {
	deadline := wallNow().Add(drainMax)
	lastSize, lastChange := int64(-1), wallNow()
	for ctx.Err() == nil && wallNow().Before(deadline) {
		present, known := fsx.OpenForWriting(old)
		if known && !present {
			return
		}
		if !known {
			fi, err := old.Stat()
			if err != nil {
				return
			}
			if fi.Size() != lastSize {
				lastSize, lastChange = fi.Size(), wallNow()
			} else if wallNow().Sub(lastChange) >= drainQuiet {
				return
			}
		}
		time.Sleep(pollInterval)
	}
}

// settleSlot finishes the drain chunk in flight when the compaction stopped.
// A reserved slot is checked and rewritten a block at a time, never held in
// memory whole; an appended chunk (no lease) is compared whole.
func settleSlot(old, newf *os.File, jr *jsonJournal) error {
	s := jr.Slot
	if s.Appended {
		chunk, err := readChunk(old, s.From, s.To, s.Newline)
		if err != nil {
			return err
		}
		written, err := chunkPresent(newf, chunk, s.At)
		if err != nil {
			return err
		}
		if written {
			jr.Offset = s.To
		}
		jr.Slot = nil
		return nil
	}
	reserved := s.Reserved
	if !reserved {
		// Before the reservation was journaled: it happened exactly when
		// the slot is NULs and a newline (a writer's bytes are JSON text,
		// never NUL).
		fi, err := newf.Stat()
		if err != nil {
			return err
		}
		if fi.Size() >= s.At+s.size() {
			empty, first, err := reservedSlotEmpty(newf, s)
			if err != nil {
				return err
			}
			switch {
			case empty:
				reserved = true
			case first == 0:
				return fmt.Errorf("%s at %d: neither a reserved drain slot nor a writer's line; the old file %s is left for inspection",
					newf.Name(), s.At, old.Name())
			}
		}
	}
	if reserved {
		if err := fsx.RefuseLinked(newf); err != nil {
			return err
		}
		cp := ndjson.NewCopier(context.Background(), old, newf, int(min(s.size(), int64(ndjson.BlockSize))), nil, nil)
		if err := fillSlot(cp, s, false); err != nil {
			return err
		}
		jr.Offset, jr.NewEnd = s.To, s.At+s.size()
	}
	jr.Slot = nil
	return nil
}

// reservedSlotEmpty reports whether the bytes of slot s in f are a reserved
// slot that nothing was written to yet (NULs, then a newline), reading them
// a block at a time, and returns the slot's first byte.
func reservedSlotEmpty(f *os.File, s *drainSlot) (empty bool, first byte, err error) {
	buf := make([]byte, min(s.size(), int64(ndjson.BlockSize)))
	empty = true
	for off, end := s.At, s.At+s.size(); off < end; {
		n := min(int64(len(buf)), end-off)
		if m, err := f.ReadAt(buf[:n], off); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return false, 0, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if off == s.At {
			first = buf[0]
		}
		b := buf[:n]
		if off+n == end {
			empty = empty && b[n-1] == '\n'
			b = b[:n-1]
		}
		empty = empty && allZero(b)
		off += n
	}
	return empty, first, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// chunkPresent reports whether chunk was appended to f at a line start at or
// after at (an append without a lease may land after other writers' lines).
func chunkPresent(f *os.File, chunk []byte, at int64) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	n := int64(len(chunk))
	limit := min(fi.Size(), at+recoverSearchWindow+n)
	lr := ndjson.NewReader(f, at, limit)
	got := make([]byte, n)
	for {
		_, off, _, err := lr.Next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if off+n > fi.Size() {
			return false, nil
		}
		if _, err := f.ReadAt(got, off); err != nil {
			return false, err
		}
		if bytes.Equal(got, chunk) {
			return true, nil
		}
	}
}

// spliceRewrite rewrites the target as new[0, NewEnd) + old[Offset, oldEnd)
// + new[NewEnd, …): the lines of the old file that an interrupted drain did
// not move go before those that writers appended to the new file since. The
// rewrite is a swap like a compaction's, whose journal carries jr as Prev.
func (j *File) spliceRewrite(ctx context.Context, files *jsonFiles, jr *jsonJournal, old *os.File, oldEnd int64) error {
	src, fi, err := files.dir.OpenRegular(files.base, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	if !inodeIs(fi, jr.NewDev, jr.NewIno) {
		return fmt.Errorf("%s changed during recovery: %w", jr.Path, backends.ErrTargetReplaced)
	}
	if fi.Size() < jr.NewEnd {
		return fmt.Errorf("%s is %d bytes, shorter than the %d the interrupted compaction wrote; the old file %s is left for inspection",
			jr.Path, fi.Size(), jr.NewEnd, jr.OldLink)
	}
	rep := backends.Report{}
	c := &compaction{j: j, files: files, path: jr.Path, rep: &rep, src: src, srcInfo: fi}
	tmp, err := c.createTemp()
	if err != nil {
		return err
	}
	defer c.removeTemp()
	cp := ndjson.NewCopier(ctx, src, tmp, ndjson.BlockSize, nil, nil)
	if err := cp.CopyRange(0, jr.NewEnd); err != nil {
		return err
	}
	if err := cp.Flush(); err != nil {
		return err
	}
	cp.Src = old
	if err := cp.CopyRange(jr.Offset, oldEnd-jr.Offset); err != nil {
		return err
	}
	var last [1]byte
	if _, err := old.ReadAt(last[:], oldEnd-1); err != nil {
		return fmt.Errorf("read %s: %w", old.Name(), err)
	}
	if last[0] != '\n' {
		// An unterminated fragment left by a writer: it gets a newline,
		// so that it cannot corrupt the next record.
		if err := cp.Write([]byte{'\n'}); err != nil {
			return err
		}
	}
	if err := cp.Flush(); err != nil {
		return err
	}
	cp.Src = src
	tailKept := false
	off, _, err := c.catchUp(ctx, cp, jr.NewEnd, &tailKept)
	if err != nil {
		return err
	}
	if err := cp.Flush(); err != nil {
		return err
	}
	if err := c.crash("splice-copied"); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", jr.Path, err)
	}
	tmpInfo, err := tmp.Stat()
	if err != nil {
		return err
	}
	prev := *jr
	prev.Settled = oldEnd
	_, err = c.swapIn(ctx, tmp, tmpInfo, off, &prev)
	return err
}
