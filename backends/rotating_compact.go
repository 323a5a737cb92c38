package backends

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// rotHook, when set (tests only), is called at named points of a compaction
// and of Recover. A non-nil error simulates a crash at that point: the
// compaction stops at once and cleans nothing up, as if the process had been
// killed (its file descriptors and lock are released, as the kernel would).
var rotHook func(point string) error

// rotCrash marks an error returned by rotHook.
type rotCrash struct{ err error }

func (c rotCrash) Error() string { return "simulated crash: " + c.err.Error() }
func (c rotCrash) Unwrap() error { return c.err }

func rotPoint(point string) error {
	if rotHook == nil {
		return nil
	}
	if err := rotHook(point); err != nil {
		return rotCrash{err}
	}
	return nil
}

func isRotCrash(err error) bool {
	var c rotCrash
	return errors.As(err, &c)
}

// rotStagingPrefix starts the name of a staging directory beside the active
// file named base.
func rotStagingPrefix(base string) string { return "." + base + ".watcher-rot-" }

// rotOldActiveLink is the name, in the staging directory, of the hard link to
// the old active file.
const rotOldActiveLink = "old-active"

// rotFile is one existing file of the snapshot.
type rotFile struct {
	idx  int // 0 for the active file, i for <path>.i
	name string
	f    *os.File
	fi   os.FileInfo
	size int64 // size at the snapshot
	end  int64 // the passes read [0, end)
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
	name  string // in the staging directory
	final string
	f     *os.File
	fi    os.FileInfo
	size  int64
	// synced is set once the file is fsynced.
	synced bool
}

// rotCompaction is one attempt at compacting the set.
type rotCompaction struct {
	r    *Rotating
	path string
	dir  string
	base string
	opts CompactOptions
	rep  Report

	files  []*rotFile    // existing files, oldest first
	byIdx  []os.FileInfo // the snapshot of every name, nil where absent
	active *rotFile      // nil when the active file does not exist
	like   os.FileInfo   // mode and owner for files with no predecessor
	drop   Dropped       // what was dropped
	notes  []string

	// pass 1
	cutFile  int   // the kept region starts in files[cutFile] ...
	cutOff   int64 // ... at this offset
	kLines   int64 // lines in the kept region
	dropBits []uint64
	records  int64 // records seen (examined records plus unexamined lines)

	// pass 2
	chunks []rotChunk // the kept chunks, oldest first

	// writing
	staging     string
	placeholder string // the placeholder this compaction created, if any
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
	err := rotPoint(name)
	if err != nil {
		c.crashed = true
	}
	return err
}

func (c *rotCompaction) run(ctx context.Context) (rep Report, err error) {
	c.rep = Report{Target: c.r.cfg.Name, Backend: KindRotating, DryRun: c.opts.DryRun}
	c.dir, c.base = filepath.Split(c.path)
	c.dir = filepath.Clean(c.dir)
	defer c.closeFiles()
	defer func() {
		if err != nil && !c.crashed {
			err = c.abort(ctx, err)
		}
	}()

	exists, err := c.anyExists()
	if err != nil {
		return c.rep, err
	}
	if !exists {
		c.rep.BeforeBytes, c.rep.AfterBytes = Int64(0), Int64(0)
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
	var before int64
	for _, f := range c.files {
		before += f.size
	}
	c.rep.BeforeBytes = Int64(before)
	c.progressTotal = before
	if err := c.pass1(ctx); err != nil {
		return c.rep, err
	}
	if err := c.pass2(ctx); err != nil {
		return c.rep, err
	}
	var after, kept int64
	for _, ch := range c.chunks {
		after += ch.bytes
		kept += ch.records
	}
	c.progressTotal = before + after
	if c.opts.DryRun {
		return c.finish(after, kept), nil
	}
	if err := c.pass3(ctx); err != nil {
		return c.rep, err
	}
	if err := c.stageActive(ctx); err != nil {
		return c.rep, err
	}
	if err := c.check(); err != nil {
		return c.rep, err
	}
	if err := c.commit(ctx); err != nil {
		return c.rep, err
	}
	return c.finish(after+c.appendBytes, kept+c.appended), nil
}

// finish fills the report.
func (c *rotCompaction) finish(afterBytes, afterRecords int64) Report {
	c.rep.BeforeRecords = c.records
	c.rep.AfterRecords = afterRecords
	c.rep.AfterBytes = Int64(afterBytes)
	c.rep.Dropped = c.drop
	c.rep.AppendedDuring = c.appended
	*c.rep.BeforeBytes += c.appendBytes
	c.rep.BeforeRecords += c.appended // appended records were there before the swap too
	c.rep.Notes = append(c.rep.Notes, c.notes...)
	c.rep.Finish()
	return c.rep
}

// anyExists reports whether any name of the set exists.
func (c *rotCompaction) anyExists() (bool, error) {
	for i := 0; i < c.r.cfg.MaxFiles; i++ {
		name := segName(c.path, i)
		_, err := os.Lstat(name)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("stat %s: %w", name, err)
		}
	}
	return false, nil
}

// prepare writes the prepare journal, creates the staging directory, makes
// sure the active file exists and creates the placeholder that stops the
// writer from rotating.
func (c *rotCompaction) prepare() error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	c.staging = filepath.Join(c.dir, rotStagingPrefix(c.base)+hex.EncodeToString(rnd[:]))
	n := c.r.cfg.MaxFiles - 1
	placeholder := ""
	if n >= 1 {
		if _, err := os.Lstat(segName(c.path, n)); errors.Is(err, os.ErrNotExist) {
			placeholder = segName(c.path, n)
		}
	}
	c.journal = &rotJournal{Version: 1, State: rotStatePrepare, Path: c.path, Staging: c.staging, Placeholder: placeholder}
	if err := os.MkdirAll(c.r.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", c.r.cfg.StateDir, err)
	}
	if err := writeJSONAtomic(c.r.journalPath(c.path), c.journal); err != nil {
		return err
	}
	if err := c.point("prepare-journal"); err != nil {
		return err
	}
	if err := os.Mkdir(c.staging, 0o700); err != nil {
		return fmt.Errorf("create staging directory %s: %w", c.staging, err)
	}
	like := c.newestExisting()
	// The active file: created empty if missing, so that the writer's next
	// record lands in an inode this compaction knows (and drains).
	if _, err := os.Lstat(c.path); errors.Is(err, os.ErrNotExist) {
		if err := createEmpty(c.path, like); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if placeholder != "" {
		err := createEmpty(placeholder, like)
		switch {
		case err == nil:
			c.placeholder = placeholder
		case errors.Is(err, os.ErrExist):
			// The writer rotated into it just now: it is a segment.
		default:
			return err
		}
		if err := c.point("placeholder"); err != nil {
			return err
		}
	}
	return nil
}

// newestExisting returns the FileInfo of the newest existing file of the set.
func (c *rotCompaction) newestExisting() os.FileInfo {
	for i := 0; i < c.r.cfg.MaxFiles; i++ {
		if fi, err := os.Stat(segName(c.path, i)); err == nil {
			return fi
		}
	}
	return nil
}

// createEmpty creates an empty file at name with O_EXCL and the mode and
// owner of like.
func createEmpty(name string, like os.FileInfo) error {
	mode := os.FileMode(0o644)
	if like != nil {
		mode = like.Mode().Perm()
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	defer f.Close()
	if like != nil {
		f.Chmod(mode)
		if st, ok := like.Sys().(*syscall.Stat_t); ok {
			if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil && !os.IsPermission(err) {
				return fmt.Errorf("set owner of %s: %w", name, err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return syncDir(filepath.Dir(name))
}

// snapshot opens every existing file of the set and records name → inode,
// size.
func (c *rotCompaction) snapshot() error {
	n := c.r.cfg.MaxFiles
	c.byIdx = make([]os.FileInfo, n)
	for i := n - 1; i >= 0; i-- {
		name := segName(c.path, i)
		f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if errors.Is(err, syscall.ELOOP) {
			return fmt.Errorf("%s: %w", name, ErrSymlink)
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("stat %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return fmt.Errorf("%s is not a regular file (%s)", name, fi.Mode())
		}
		rf := &rotFile{idx: i, name: name, f: f, fi: fi, size: fi.Size(), end: fi.Size()}
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
		l0, err := lastLineEnd(a.f, a.size)
		if err != nil {
			return fmt.Errorf("read %s: %w", a.name, err)
		}
		if l0 < a.size && !partialExpired(a.fi.ModTime(), c.opts.PartialLineGrace) {
			a.end = l0
			c.notes = append(c.notes, fmt.Sprintf("%s ends in an unterminated line written %s ago: treated as a write in flight",
				a.name, time.Since(a.fi.ModTime()).Round(time.Millisecond)))
		}
	}
	return nil
}

func (c *rotCompaction) closeFiles() {
	for _, f := range c.files {
		f.f.Close()
	}
	for _, s := range c.staged {
		if s.f != nil {
			s.f.Close()
		}
	}
}

// ---- pass 1: retention, newest first ----

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

var errRotCutDone = errors.New("cut done")

func (c *rotCompaction) pass1(ctx context.Context) error {
	cut := c.opts.Retention.NewCut(c.opts.Now)
	var bi int64
	c.cutFile, c.cutOff = 0, 0
	done := false
	var cutLine int64 // where the line that ended the cut starts
	offer := func(fi int, line []byte, off int64) bool {
		complete := len(line) > 0 && line[len(line)-1] == '\n'
		content := line
		if complete {
			content = line[:len(line)-1]
		}
		info := ClassifyLine(content)
		if info.Record {
			c.records++
		}
		why := cut.Offer(info, int64(len(content))+1)
		if cut.Done() {
			c.drop.Add(why)
			c.cutFile, c.cutOff, cutLine = fi, off+int64(len(line)), off
			done = true
			return false
		}
		switch {
		case why == Kept:
		case why == DropInvalid && !complete:
			c.drop.Partial++
			c.setDropped(bi)
		default:
			c.drop.Add(why)
			c.setDropped(bi)
		}
		bi++
		return true
	}
	for fi := len(c.files) - 1; fi >= 0 && !done; fi-- {
		f := c.files[fi]
		end := f.end
		// An unterminated last line first: readLinesBackward wants a line
		// boundary.
		l, err := lastLineEnd(f.f, end)
		if err != nil {
			return fmt.Errorf("read %s: %w", f.name, err)
		}
		if l < end {
			tail := make([]byte, end-l)
			if _, err := f.f.ReadAt(tail, l); err != nil {
				return fmt.Errorf("read %s: %w", f.name, err)
			}
			if !offer(fi, tail, l) {
				break
			}
		}
		var n int64
		err = readLinesBackward(ctx, f.f, 0, l, func(line []byte, off int64) bool {
			n += int64(len(line))
			if n >= 4<<20 {
				c.progress(n)
				n = 0
			}
			return offer(fi, line, off)
		})
		c.progress(n)
		if err != nil {
			return fmt.Errorf("read %s: %w", f.name, err)
		}
	}
	c.kLines = bi
	if done {
		// Everything older than the cut is dropped unread: count its lines.
		var unexamined, invalid int64
		for fi := c.cutFile; fi >= 0; fi-- {
			f := c.files[fi]
			end := f.end
			if fi == c.cutFile {
				end = cutLine // the line that ended the cut is counted already
			}
			shaped, other, err := countUnread(ctx, f.f, end)
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
	}
	return nil
}

// ---- pass 2: chunk boundaries, oldest first ----

// forEachKept calls fn for every line of the kept region from files[fi] at
// off (a line start whose forward index is j) onward: the line (its '\n'
// included when it has one), its offset, its forward index and whether it is
// kept. fn returns false to stop.
func (c *rotCompaction) forEachKept(ctx context.Context, fi int, off, j int64, fn func(fi int, line []byte, off, j int64, kept bool) (bool, error)) error {
	for ; fi < len(c.files); fi++ {
		f := c.files[fi]
		lr := newLineReader(f.f, off, f.end)
		for {
			if j&4095 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			line, loff, _, err := lr.next()
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

func (c *rotCompaction) pass2(ctx context.Context) error {
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
		c.drop.Count += droppedRecords
		c.notes = append(c.notes, fmt.Sprintf("%d records dropped because the survivors fill more than max_files=%d chunks of max_bytes=%d (%d chunks)",
			droppedRecords, maxFiles, c.r.cfg.MaxBytes, total))
	}
	return nil
}

// ---- pass 3: write the kept chunks into the staging directory ----

// finalIndex is the set index chunk ci of the kept chunks lands at.
func (c *rotCompaction) finalIndex(ci int) int { return len(c.chunks) - 1 - ci }

func (c *rotCompaction) likeFor(idx int) os.FileInfo {
	if idx < len(c.byIdx) && c.byIdx[idx] != nil {
		return c.byIdx[idx]
	}
	return c.like
}

func (c *rotCompaction) newStaged(idx int) (*rotStaged, error) {
	f, err := createTemp(c.staging, c.base, c.likeFor(idx))
	if err != nil {
		return nil, err
	}
	s := &rotStaged{name: f.Name(), final: segName(c.path, idx), f: f}
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

func (c *rotCompaction) pass3(ctx context.Context) error {
	if len(c.chunks) == 0 {
		_, err := c.newStaged(0)
		return err
	}
	cp := newCopier(ctx, nil, nil, c.opts.WaitIO, c.progress)
	ci := 0
	s, err := c.newStaged(c.finalIndex(0))
	if err != nil {
		return err
	}
	cp.dst = s.f
	// A run of kept bytes [runOff, runEnd) of files[runFile] not yet copied.
	runFile, runOff, runEnd := -1, int64(0), int64(0)
	flushRun := func() error {
		if runFile >= 0 && runEnd > runOff {
			cp.src = c.files[runFile].f
			if err := cp.copyRange(runOff, runEnd-runOff); err != nil {
				return err
			}
		}
		runFile = -1
		return nil
	}
	nextStart := int64(-1)
	if len(c.chunks) > 1 {
		nextStart = c.chunks[1].line
	}
	first := c.chunks[0]
	err = c.forEachKept(ctx, first.file, first.off, first.line, func(fi int, line []byte, off, j int64, kept bool) (bool, error) {
		if !kept {
			return true, flushRun()
		}
		if j == nextStart {
			if err := flushRun(); err != nil {
				return false, err
			}
			if err := cp.flush(); err != nil {
				return false, err
			}
			if err := c.sealStaged(s, cp.dstOff); err != nil {
				return false, err
			}
			ci++
			if s, err = c.newStaged(c.finalIndex(ci)); err != nil {
				return false, err
			}
			cp.dst, cp.dstOff = s.f, 0
			nextStart = -1
			if ci+1 < len(c.chunks) {
				nextStart = c.chunks[ci+1].line
			}
		}
		if line[len(line)-1] != '\n' {
			// An unterminated last line that is a record: it gets its newline.
			if err := flushRun(); err != nil {
				return false, err
			}
			cp.src = c.files[fi].f
			if err := cp.copyRange(off, int64(len(line))); err != nil {
				return false, err
			}
			return true, cp.write([]byte{'\n'})
		}
		if runFile == fi && runEnd == off {
			runEnd += int64(len(line))
			return true, nil
		}
		if err := flushRun(); err != nil {
			return false, err
		}
		runFile, runOff, runEnd = fi, off, off+int64(len(line))
		return true, nil
	})
	if err != nil {
		return err
	}
	if err := flushRun(); err != nil {
		return err
	}
	if err := cp.flush(); err != nil {
		return err
	}
	s.size = cp.dstOff
	if want := c.chunks[len(c.chunks)-1].bytes; s.size != want {
		return fmt.Errorf("staged %s holds %d bytes, want %d: %s changed while being compacted", s.f.Name(), s.size, want, c.path)
	}
	return nil
}

// ---- catch-up, link, check ----

// stageActive copies the records appended to the active file since the
// snapshot to the end of the new active chunk, fsyncs everything staged and
// hard-links the old active file into the staging directory.
func (c *rotCompaction) stageActive(ctx context.Context) error {
	s := c.staged[len(c.staged)-1] // the new active chunk
	if fi, err := s.f.Stat(); err == nil {
		s.size = fi.Size()
	}
	catchUp := int64(0)
	if a := c.active; a != nil {
		var err error
		catchUp, err = c.catchUp(ctx, s)
		if err != nil {
			return err
		}
	}
	for _, st := range c.staged {
		if err := c.sealStaged(st, st.size); err != nil {
			return err
		}
		if err := st.f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", st.f.Name(), err)
		}
		st.f = nil
	}
	if c.active != nil {
		link := filepath.Join(c.staging, rotOldActiveLink)
		if err := os.Link(c.active.name, link); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s disappeared: %w", c.active.name, ErrConcurrentRotation)
			}
			return fmt.Errorf("link %s to %s: %w", c.active.name, link, err)
		}
		fi, err := os.Lstat(link)
		if err != nil {
			return fmt.Errorf("stat %s: %w", link, err)
		}
		if !os.SameFile(fi, c.active.fi) {
			return fmt.Errorf("%s is no longer the file compacted: %w", c.active.name, ErrConcurrentRotation)
		}
		c.journal.OldActiveLink = link
		c.journal.OldActiveDev, c.journal.OldActiveIno = inodeOf(fi)
		c.journal.CatchUp = catchUp
	}
	if err := syncDir(c.staging); err != nil {
		return err
	}
	if err := syncDir(c.dir); err != nil {
		return err
	}
	return c.point("staged")
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
		return 0, fmt.Errorf("%s shrank from %d to %d bytes (truncated by the writer): %w", a.name, a.size, fi.Size(), ErrConcurrentRotation)
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
		fi, err := os.Lstat(name)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if want != nil {
				return fmt.Errorf("%s disappeared: %w", name, ErrConcurrentRotation)
			}
			continue
		case err != nil:
			return fmt.Errorf("stat %s: %w", name, err)
		case want == nil:
			return fmt.Errorf("%s appeared: %w", name, ErrConcurrentRotation)
		case !os.SameFile(fi, want):
			return fmt.Errorf("%s was replaced: %w", name, ErrConcurrentRotation)
		case i > 0 && fi.Size() != want.Size():
			return fmt.Errorf("%s changed size from %d to %d: %w", name, want.Size(), fi.Size(), ErrConcurrentRotation)
		}
	}
	return nil
}

// ---- commit ----

func (c *rotCompaction) commit(ctx context.Context) error {
	jr := c.journal
	jr.State = rotStateCommit
	for _, s := range c.staged {
		dev, ino := inodeOf(s.fi)
		jr.Installs = append(jr.Installs, rotInstall{Staged: s.name, Final: s.final, Dev: dev, Ino: ino, Size: s.size})
	}
	jr.NewActiveSize = c.staged[len(c.staged)-1].size
	_, jr.NewActiveIno = inodeOf(c.staged[len(c.staged)-1].fi)
	for i := len(c.chunks); i < c.r.cfg.MaxFiles; i++ {
		if i == 0 {
			continue // the active file is always installed
		}
		if fi := c.byIdx[i]; fi != nil {
			dev, ino := inodeOf(fi)
			jr.Removes = append(jr.Removes, rotRemove{Path: segName(c.path, i), Dev: dev, Ino: ino})
		}
	}
	if err := writeJSONAtomic(c.r.journalPath(c.path), jr); err != nil {
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
	res, err := c.r.rollForward(ctx, jr, old, c.point)
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

// abort undoes an attempt that failed before its commit point, or completes
// one that failed after it. It returns err, annotated.
func (c *rotCompaction) abort(ctx context.Context, err error) error {
	if c.opts.DryRun || c.journal == nil {
		return err
	}
	if c.committed {
		if rerr := c.r.recoverLocked(context.WithoutCancel(ctx), c.path); rerr != nil {
			return fmt.Errorf("%w (and completing the swap failed: %v; it is completed by the next Recover)", err, rerr)
		}
		return err
	}
	c.closeFiles()
	for _, f := range c.files {
		f.f = nil
	}
	c.files = nil
	var errs []string
	if err := os.RemoveAll(c.staging); err != nil {
		errs = append(errs, err.Error())
	}
	if c.placeholder != "" {
		if err := removeIfEmpty(c.placeholder); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if err := removeDurably(c.r.journalPath(c.path)); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w (cleanup: %s)", err, strings.Join(errs, "; "))
	}
	return err
}

// removeIfEmpty removes name if it is an empty regular file: a placeholder
// (or an empty segment: nothing is lost either way).
func removeIfEmpty(name string) error {
	fi, err := os.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 {
		return nil
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove placeholder %s: %w", name, err)
	}
	return syncDir(filepath.Dir(name))
}

// rotAppender writes at a tracked offset of a file.
type rotAppender struct {
	f   *os.File
	off int64
}

func (w *rotAppender) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}
