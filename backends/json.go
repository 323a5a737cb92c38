package backends

// The json backend: one NDJSON file that Papyra appends to.
//
// # Compaction
//
// A compaction reads the file in two passes and never holds more than a few
// blocks (blockSize, 1 MiB) plus the longest line in memory:
//
//  1. Backward from the end of the last complete line, in blocks: every line
//     is classified (ClassifyLine) and offered to the retention Cut, newest
//     first, until the Cut is done or the file begins. Lines older than the
//     line that completed the cut are never parsed. Dropped lines inside the
//     surviving region are remembered as holes (at most maxHoles; beyond
//     that pass 2 re-classifies the surviving region forward, which gives
//     the same decisions: inside it a line is kept exactly when it is a
//     record that passes the age limit).
//  2. Forward: the surviving runs are copied byte for byte into a temporary
//     file in the same directory (O_EXCL, the original's mode and owner),
//     with copy_file_range for long runs.
//
// # Live writer
//
// Papyra's writer opens the file with O_APPEND for every record, writes one
// whole line with one write, and closes it; it takes no lock. The swap is
// safe against it:
//
//   - the snapshot is the file's size when the compaction starts; only
//     [0, snapshot) is subject to retention;
//   - catch-up: complete lines appended since are copied verbatim (never
//     subject to retention; the next compaction sees them) until little is
//     left; a final unterminated line is waited for briefly (see below);
//   - the temp file is fsynced; the old inode is hard-linked to
//     ".<base>.watcher-old" in the same directory; an intent journal (target,
//     path, link name, old and new inode, catch-up offset) is written to the
//     state directory (temp file, fsync, rename, fsync directory); the
//     target is checked to still be the inode we read (else
//     ErrTargetReplaced, nothing changed); rename(temp, path); a first
//     drain pass (below); fsync of the directory;
//   - drain: a writer that opened the old inode before the rename may still
//     write to it. The old file stays open and whatever lands in it past the
//     catch-up offset is appended to the new file in whole lines (O_APPEND,
//     one write per chunk, the journal updated with the chunk's range before
//     each write, without fsync so the drain follows the rename at once),
//     until no process has the old inode open for writing (see below);
//     then the link and the journal are removed. From before the rename to
//     the end of the drain the new file carries a write lease (F_SETLEASE
//     F_WRLCK, on the only descriptor open on it), so a writer's open of the
//     path waits in the kernel until the drain is over (milliseconds), and a
//     writer seen waiting on it ends the drain: it is done with the old file.
//
// Guaranteed: every complete line appended to the file during a compaction is
// in the new file exactly once, whether it was written before the rename
// (catch-up or drain) or after (directly to the new file): the drain ends
// only once no process has the old file open for writing (a read lease can be
// taken on it), waiting up to drainMax for a writer that keeps it open; where
// leases are unavailable (NFS, no CAP_LEASE and not the owner) it ends once
// the old file has been quiet for drainQuiet, and a writer slower than that
// between its open and its write could lose its line. Record order is kept
// too, thanks to the lease on the new file. Not guaranteed: the order where
// leases are unavailable (a record drained from the old inode can land after
// one written to the new file in the same instant), and a line written with
// several write calls that straddles the swap (a multi-write line can
// interleave with any other writer anyway). A drained unterminated fragment is appended with
// a newline added, so that it cannot corrupt the next record (it is then an
// invalid line that the next compaction drops).
//
// # Crash safety
//
// After SIGKILL at any instant the path holds either the old file or the new
// file; nothing is lost. Recover (also run at the start of every
// compaction) finishes the protocol: with a journal and the old link present
// and the path holding the journaled new inode, the swap happened, so the old
// link is drained from the journaled offset into the path (a chunk whose
// write may or may not have happened is searched for in the new file first,
// so it is not appended twice); if the path still holds the old inode the
// swap did not happen and the link is removed. Temporary files are always
// removed. A journal whose old link is gone means the drain finished.
//
// # Partial last line
//
// An unterminated final line is a write in flight: it is kept, unchanged,
// after the retained records, unless the file has been quiet (mtime) for
// longer than CompactOptions.PartialLineGrace, in which case it is a crash
// leftover and is dropped (Dropped.Partial). A PartialLineGrace of zero or
// less means never expires: the line is always kept.
//
// # Report
//
// BeforeRecords counts the valid records examined plus the lines older than
// the cut that look like records (Dropped.Unexamined: lines that begin with
// '{' and end with '}' — they are not parsed, so one that is not valid JSON
// is counted too), plus records appended during the compaction. The other
// non-blank lines older than the cut are counted in Dropped.Invalid.
// AfterRecords counts the retained records plus the appended ones
// (AppendedDuring). BeforeBytes is the size of the old file including what
// was appended to it during the compaction; AfterBytes is what the new file
// received from the compaction (not what writers appended to it directly
// after the swap). So RemovedRecords = Age + Count + Bytes + NoTimestamp +
// Unexamined.

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
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Tunables of the swap; tests shrink them.
var (
	// drainQuiet is how long the old inode must stay unchanged after the
	// swap before the drain ends.
	drainQuiet = 60 * time.Millisecond
	// drainMax bounds the drain.
	drainMax = 5 * time.Second
	// pollInterval is how often size changes are polled.
	pollInterval = 2 * time.Millisecond
	// tailQuiet is how long an unterminated last line must have been
	// unchanged before the compaction decides about it; tailMaxWait bounds
	// the wait.
	tailQuiet   = 50 * time.Millisecond
	tailMaxWait = time.Second
	// catchUpSmall: catch-up rounds repeat while a round copied more.
	catchUpSmall = int64(64 << 10)
	// maxHoles caps the dropped-line ranges pass 1 remembers.
	maxHoles = 65536
	// recoverSearchWindow bounds how far into the new file Recover looks
	// for a drain chunk whose write may have happened.
	recoverSearchWindow = int64(64 << 20)
	// wallNow is the clock for file ages (mtime); CompactOptions.Now is
	// only for retention.
	wallNow = time.Now
)

// crashHook, when set, is called at named points of a compaction and of
// Recover. A non-nil error stops the operation right there, with no
// clean-up, as a SIGKILL would; tests use it to simulate crashes.
var crashHook func(point string) error

func hook(point string) error {
	if crashHook != nil {
		return crashHook(point)
	}
	return nil
}

// JSONConfig configures a json target.
type JSONConfig struct {
	// Name is the target's name, used in reports and state file names.
	Name string
	// Path is the absolute path of the NDJSON file.
	Path string
	// StateDir holds the journal and lock of the target. Empty means the
	// file's directory.
	StateDir string
	// FollowSymlinks allows Path to be a symbolic link; compaction then
	// replaces the file it resolves to.
	FollowSymlinks bool
}

// JSON is the backend of one Papyra JSON file (backend "json").
type JSON struct {
	cfg         JSONConfig
	journalPath string
	lockPath    string
}

var _ Backend = (*JSON)(nil)

// NewJSON returns the backend for cfg. It touches nothing on disk.
func NewJSON(cfg JSONConfig) (*JSON, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("json target %q: path is empty", cfg.Name)
	}
	if !filepath.IsAbs(cfg.Path) {
		return nil, fmt.Errorf("json target %q: path %q is not absolute", cfg.Name, cfg.Path)
	}
	cfg.Path = filepath.Clean(cfg.Path)
	if cfg.Name == "" {
		cfg.Name = filepath.Base(cfg.Path)
	}
	dir := cfg.StateDir
	prefix := ""
	if dir == "" {
		dir = filepath.Dir(cfg.Path)
		prefix = "."
	}
	return &JSON{
		cfg:         cfg,
		journalPath: filepath.Join(dir, prefix+stateName(KindJSON, cfg.Name, cfg.Path, ".journal")),
		lockPath:    filepath.Join(dir, prefix+stateName(KindJSON, cfg.Name, cfg.Path, ".lock")),
	}, nil
}

// Kind returns KindJSON.
func (j *JSON) Kind() string { return KindJSON }

// Close releases nothing: the backend holds no open files between calls.
func (j *JSON) Close() error { return nil }

// resolve returns the path to operate on: the configured path, or the file
// it links to when symlinks are followed. A symlink is refused otherwise.
func (j *JSON) resolve() (string, error) {
	if err := checkPath(j.cfg.Path, j.cfg.FollowSymlinks); err != nil {
		return "", fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	if !j.cfg.FollowSymlinks {
		return j.cfg.Path, nil
	}
	p, err := filepath.EvalSymlinks(j.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		return j.cfg.Path, nil // dangling or missing: an empty target
	}
	if err != nil {
		return "", fmt.Errorf("json target %s: resolve %s: %w", j.cfg.Name, j.cfg.Path, err)
	}
	return p, nil
}

// oldLinkName is the name the old inode is linked to during a swap.
func oldLinkName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".watcher-old")
}

// Stat returns the file's size and modification time; a missing file is 0
// bytes.
func (j *JSON) Stat(ctx context.Context) (Stat, error) {
	st := Stat{Files: []string{j.cfg.Path}}
	fi, err := os.Stat(j.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return Stat{Bytes: -1, Files: st.Files}, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	st.Bytes = fi.Size()
	st.ModTime = fi.ModTime()
	return st, nil
}

// scanResult is what pass 1 learned.
type scanResult struct {
	examined  int64 // valid records examined
	kept      int64 // records retained
	keptBytes int64 // their stored bytes
	dropped   Dropped
	survStart int64  // the surviving region is [survStart, end)
	unexEnd   int64  // lines in [0, unexEnd) were not examined
	holes     []span // dropped lines in the surviving region, ascending
	overflow  bool   // too many holes: re-classify in pass 2
}

type span struct{ start, end int64 }

// parallelMin is the smallest file pass 1 splits over two cores when every
// line has to be classified anyway.
var parallelMin int64 = 8 << 20

// pass1 evaluates retention over the lines of [0, end), newest first.
//
// Without a count or size limit the cut is never done: every line is
// classified and its fate depends on that line alone. Then, for a large file
// on a machine with more than one core, the two halves (split at a line
// boundary) are classified at once and their results joined.
func pass1(ctx context.Context, f *os.File, end int64, cut *Cut, progress func(int64)) (scanResult, error) {
	if cut.r.MaxRecords != nil || cut.r.MaxTotalBytes != nil || end < parallelMin || runtime.GOMAXPROCS(0) < 2 {
		return pass1Range(ctx, f, 0, end, cut, progress)
	}
	mid, err := lastLineEnd(f, end/2)
	if err != nil || mid == 0 {
		return pass1Range(ctx, f, 0, end, cut, progress)
	}
	var mu sync.Mutex
	prog := func(n int64) {
		if progress != nil {
			mu.Lock()
			progress(n)
			mu.Unlock()
		}
	}
	var low scanResult
	var lowErr error
	lowCut := *cut
	done := make(chan struct{})
	go func() {
		defer close(done)
		low, lowErr = pass1Range(ctx, f, 0, mid, &lowCut, prog)
	}()
	high, err := pass1Range(ctx, f, mid, end, cut, prog)
	<-done
	if err == nil {
		err = lowErr
	}
	if err != nil {
		return high, err
	}
	res := scanResult{
		examined:  low.examined + high.examined,
		kept:      low.kept + high.kept,
		keptBytes: low.keptBytes + high.keptBytes,
		dropped:   low.dropped,
		overflow:  low.overflow || high.overflow,
	}
	res.dropped.AddCounts(high.dropped)
	if !res.overflow {
		res.holes = append(low.holes, high.holes...)
		if n := len(low.holes); n > 0 && len(high.holes) > 0 && low.holes[n-1].end == high.holes[0].start {
			res.holes[n-1].end = high.holes[0].end
			res.holes = append(res.holes[:n], res.holes[n+1:]...)
		}
		if len(res.holes) > maxHoles {
			res.overflow, res.holes = true, nil
		}
	}
	return res, nil
}

// pass1Range evaluates retention over the lines of [start, end), newest
// first; start is a line boundary.
func pass1Range(ctx context.Context, f *os.File, start, end int64, cut *Cut, progress func(int64)) (scanResult, error) {
	res := scanResult{}
	var read int64
	lastReport := end
	err := readLinesBackward(ctx, f, start, end, func(line []byte, off int64) bool {
		info := ClassifyLine(line[:len(line)-1])
		if info.Record {
			res.examined++
		}
		size := int64(len(line))
		r := cut.Offer(info, size)
		if r == Kept {
			res.kept++
			res.keptBytes += size
		} else {
			res.dropped.Add(r)
			if cut.Done() {
				res.survStart = off + size
				res.unexEnd = off
				return false
			}
			if !res.overflow {
				if n := len(res.holes); n > 0 && res.holes[n-1].start == off+size {
					res.holes[n-1].start = off
				} else if n < maxHoles {
					res.holes = append(res.holes, span{off, off + size})
				} else {
					res.overflow, res.holes = true, nil
				}
			}
		}
		if progress != nil && lastReport-off >= int64(blockSize) {
			read += lastReport - off
			progress(lastReport - off)
			lastReport = off
		}
		return true
	})
	if err != nil {
		return res, err
	}
	// Ascending order for pass 2.
	for i, k := 0, len(res.holes)-1; i < k; i, k = i+1, k-1 {
		res.holes[i], res.holes[k] = res.holes[k], res.holes[i]
	}
	return res, nil
}

// keepInRegion is pass 1's decision for a line in the surviving region.
func keepInRegion(cut *Cut, info LineInfo) bool {
	if !info.Record {
		return false
	}
	if cut.r.MaxAgeSeconds != nil && (!info.HasTimestamp || info.Timestamp < cut.cutoff) {
		return false
	}
	return true
}

// lastLineEnd returns the offset just after the last '\n' in [0, size).
func lastLineEnd(f *os.File, size int64) (int64, error) {
	buf := make([]byte, min(int64(blockSize), max(size, 1)))
	for hi := size; hi > 0; {
		n := min(int64(len(buf)), hi)
		lo := hi - n
		if m, err := f.ReadAt(buf[:n], lo); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return lo + int64(i) + 1, nil
		}
		hi = lo
	}
	return 0, nil
}

// partialExpired reports whether an unterminated last line of a file last
// modified at mtime is a crash leftover rather than a write in flight. With
// no grace it is always taken for a write in flight.
func partialExpired(mtime time.Time, grace time.Duration) bool {
	return grace > 0 && wallNow().Sub(mtime) > grace
}

// Compact applies opts.Retention to the file; see the package comment of
// json.go for the protocol and what the report counts.
func (j *JSON) Compact(ctx context.Context, opts CompactOptions) (Report, error) {
	rep := Report{Target: j.cfg.Name, Backend: KindJSON, DryRun: opts.DryRun}
	if err := opts.Retention.Validate(); err != nil {
		return rep, fmt.Errorf("json target %s: retention: %w", j.cfg.Name, err)
	}
	path, err := j.resolve()
	if err != nil {
		return rep, err
	}
	if !opts.DryRun {
		lock, err := tryLock(j.lockPath)
		if err != nil {
			return rep, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
		}
		defer lock.unlock()
		if err := j.recoverLocked(ctx, path); err != nil {
			return rep, err
		}
	}
	c := &compaction{j: j, path: path, opts: opts, rep: &rep}
	if err := c.run(ctx); err != nil {
		return rep, fmt.Errorf("json target %s: compact %s: %w", j.cfg.Name, path, err)
	}
	rep.Finish()
	return rep, nil
}

// compaction is one run of Compact.
type compaction struct {
	j     *JSON
	path  string
	opts  CompactOptions
	rep   *Report
	total int64
	done  int64

	src     *os.File
	srcInfo os.FileInfo
	tmp     *os.File
	crashed bool // a crash hook fired: leave everything as it is
	linked  bool // the old link exists
	swapped bool // the rename happened
}

func (c *compaction) progress(n int64) {
	c.done += n
	if c.opts.Progress != nil {
		c.opts.Progress(min(c.done, c.total), c.total)
	}
}

func (c *compaction) crash(point string) error {
	if err := hook(point); err != nil {
		c.crashed = true
		return err
	}
	return nil
}

func (c *compaction) run(ctx context.Context) (err error) {
	rep := c.rep
	src, err := os.Open(c.path)
	if errors.Is(err, os.ErrNotExist) {
		rep.BeforeBytes, rep.AfterBytes = Int64(0), Int64(0)
		return nil
	}
	if err != nil {
		return err
	}
	defer src.Close()
	c.src = src
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", c.path)
	}
	c.srcInfo = fi
	size := fi.Size()
	c.total = size
	end, err := lastLineEnd(src, size)
	if err != nil {
		return err
	}
	cut := c.opts.Retention.NewCut(c.opts.Now)
	res, err := pass1(ctx, src, end, cut, c.progress)
	if err != nil {
		return err
	}
	// Older lines need no work: count them while pass 2 copies.
	type countResult struct {
		shaped, other int64
		err           error
	}
	counted := make(chan countResult, 1)
	cctx, cancelCount := context.WithCancel(ctx)
	defer cancelCount()
	go func() {
		shaped, other, err := countUnread(cctx, src, res.unexEnd)
		counted <- countResult{shaped, other, err}
	}()
	waitCount := func() (countResult, error) {
		r := <-counted
		counted <- r
		return r, r.err
	}
	defer func() {
		cancelCount()
		waitCount()
	}()
	c.done = size - res.survStart
	c.total = size + res.keptBytes

	rep.Dropped = res.dropped
	tailKept, tailBytes := false, size-end
	if tailBytes > 0 {
		if partialExpired(fi.ModTime(), c.opts.PartialLineGrace) {
			rep.Dropped.Partial = 1
		} else {
			tailKept = true
		}
	}

	if c.opts.DryRun {
		unex, err := waitCount()
		if err != nil {
			return err
		}
		rep.Dropped.Unexamined = unex.shaped
		rep.Dropped.Invalid += unex.other
		rep.BeforeRecords = res.examined + unex.shaped
		rep.AfterRecords = res.kept
		rep.BeforeBytes = Int64(size)
		after := res.keptBytes
		if tailKept {
			after += tailBytes
		}
		rep.AfterBytes = Int64(after)
		return nil
	}

	dir, base := filepath.Split(c.path)
	tmp, err := createTemp(dir, base, fi)
	if err != nil {
		return err
	}
	c.tmp = tmp
	defer func() {
		if !c.crashed {
			tmp.Close()
			if !c.swapped {
				os.Remove(tmp.Name())
			}
		}
	}()
	if err := c.crash("temp-created"); err != nil {
		return err
	}
	cp := newCopier(ctx, src, tmp, c.opts.WaitIO, c.progress)
	if err := copySurvivors(ctx, cp, src, cut, res, end); err != nil {
		return err
	}
	if err := c.crash("survivors-copied"); err != nil {
		return err
	}

	// Catch up with what was appended since the snapshot.
	off, appended, err := c.catchUp(ctx, cp, end, &tailKept)
	if err != nil {
		return err
	}
	if tailKept {
		rep.Dropped.Partial = 0
	}
	if err := cp.flush(); err != nil {
		return err
	}
	if err := c.crash("caught-up"); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	tmpInfo, err := tmp.Stat()
	if err != nil {
		return err
	}
	newSize := tmpInfo.Size()
	unex, err := waitCount()
	if err != nil {
		return err
	}

	// Swap.
	if err := c.checkTarget(off); err != nil {
		return err
	}
	oldLink := oldLinkName(c.path)
	if err := os.Link(c.path, oldLink); err != nil {
		return fmt.Errorf("link %s to %s: %w", c.path, oldLink, err)
	}
	c.linked = true
	defer func() {
		if c.linked && !c.swapped && !c.crashed {
			os.Remove(oldLink)
		}
	}()
	if li, err := os.Lstat(oldLink); err != nil || !sameInode(li, fi) {
		return fmt.Errorf("%s: %w", c.path, ErrTargetReplaced)
	}
	if err := c.crash("linked"); err != nil {
		return err
	}
	oldDev, oldIno := inodeOf(fi)
	newDev, newIno := inodeOf(tmpInfo)
	jr := jsonJournal{
		Version: 1, Target: c.j.cfg.Name, Path: c.path, OldLink: oldLink, Temp: tmp.Name(),
		OldDev: oldDev, OldIno: oldIno, NewDev: newDev, NewIno: newIno, Offset: off,
	}
	if err := writeJSONAtomic(c.j.journalPath, &jr); err != nil {
		return err
	}
	defer func() {
		if !c.swapped && !c.crashed {
			removeDurably(c.j.journalPath)
		}
	}()
	if err := c.crash("journaled"); err != nil {
		return err
	}
	if err := c.checkTarget(off); err != nil {
		return err
	}
	// The new file is written through one descriptor that holds a write
	// lease across the rename and the drain: a writer's open of the path
	// waits in the kernel until the drain is over, so drained records stay
	// ahead of every later record. (A write lease needs the only open
	// descriptor of the file, hence the reopen.)
	newf, err := os.OpenFile(tmp.Name(), os.O_RDWR|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", tmp.Name(), err)
	}
	defer newf.Close()
	if nfi, err := newf.Stat(); err != nil || !sameInode(nfi, tmpInfo) {
		return fmt.Errorf("%s changed under the compaction: %w", tmp.Name(), ErrTargetReplaced)
	}
	tmp.Close()
	leased := takeLease(newf)
	defer func() {
		if leased {
			releaseLease(newf)
		}
	}()
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), c.path, err)
	}
	c.swapped = true
	if err := c.crash("renamed"); err != nil {
		return err
	}
	// Drain: finish even when ctx is cancelled; the swap is done. The
	// directory is fsynced after the first drain pass, so that records that
	// reached the old file just before the rename are appended at once.
	dctx := context.WithoutCancel(ctx)
	dr, err := drain(dctx, src, newf, leased, &jr, c.j.journalPath, func() error {
		if err := syncDir(dir); err != nil {
			return err
		}
		return c.crash("dir-synced")
	})
	if err != nil {
		c.crashed = c.crashed || dr.crashed
		return err
	}
	if err := c.crash("drained"); err != nil {
		return err
	}
	if err := os.Remove(oldLink); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", oldLink, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := c.crash("unlinked"); err != nil {
		return err
	}
	if err := removeDurably(c.j.journalPath); err != nil {
		return err
	}

	if c.opts.Progress != nil {
		c.total = max(c.total, c.done)
		c.opts.Progress(c.total, c.total)
	}
	appended += dr.records
	rep.Dropped.Unexamined = unex.shaped
	rep.Dropped.Invalid += unex.other
	rep.AppendedDuring = appended
	rep.BeforeRecords = res.examined + unex.shaped + appended
	rep.AfterRecords = res.kept + appended
	rep.BeforeBytes = Int64(max(off, size) + dr.bytes)
	rep.AfterBytes = Int64(newSize + dr.written)
	if dr.fragment {
		rep.Notes = append(rep.Notes, "an unterminated line written to the old file during the swap was kept with a newline added")
	}
	return nil
}

// checkTarget fails with ErrTargetReplaced when the path no longer holds
// the file being compacted, or the file shrank below off.
func (c *compaction) checkTarget(off int64) error {
	cur, err := os.Stat(c.path)
	if err != nil || !sameInode(cur, c.srcInfo) {
		return fmt.Errorf("%s: %w", c.path, ErrTargetReplaced)
	}
	if cur.Size() < off {
		return fmt.Errorf("%s shrank from %d to %d bytes: %w", c.path, off, cur.Size(), ErrTargetReplaced)
	}
	return nil
}

// copySurvivors copies the surviving lines of [res.survStart, end).
func copySurvivors(ctx context.Context, cp *copier, src *os.File, cut *Cut, res scanResult, end int64) error {
	if !res.overflow {
		pos := res.survStart
		for _, h := range res.holes {
			if h.start > pos {
				if err := cp.copyRange(pos, h.start-pos); err != nil {
					return err
				}
			}
			pos = h.end
		}
		if end > pos {
			return cp.copyRange(pos, end-pos)
		}
		return nil
	}
	lr := newLineReader(src, res.survStart, end)
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, _, _, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if keepInRegion(cut, ClassifyLine(line[:len(line)-1])) {
			if err := cp.write(line); err != nil {
				return err
			}
		}
	}
}

// catchUp copies the complete lines appended to the source from off on,
// until little is left, and decides about an unterminated last line. It
// returns the offset of the old file up to which everything is settled (in
// the temp file or dropped) and how many records it copied. *tailKept is
// updated with the final decision about an unterminated line.
func (c *compaction) catchUp(ctx context.Context, cp *copier, off int64, tailKept *bool) (int64, int64, error) {
	var records int64
	deadline := wallNow().Add(tailMaxWait)
	for round := 0; ; round++ {
		if err := ctx.Err(); err != nil {
			return off, records, err
		}
		fi, err := c.src.Stat()
		if err != nil {
			return off, records, err
		}
		size := fi.Size()
		if size < off {
			return off, records, fmt.Errorf("%s shrank from %d to %d bytes: %w", c.path, off, size, ErrTargetReplaced)
		}
		start := off
		lr := newLineReader(c.src, off, size)
		for {
			line, _, complete, err := lr.next()
			if err == io.EOF || (err == nil && !complete) {
				break
			}
			if err != nil {
				return off, records, err
			}
			if ClassifyLine(line).Record {
				records++
			}
			off += int64(len(line))
		}
		if off > start {
			if err := cp.copyRange(start, off-start); err != nil {
				return off, records, err
			}
		}
		if off-start > catchUpSmall && round < 20 {
			continue
		}
		if size == off {
			*tailKept = false
			return off, records, nil
		}
		// An unterminated last line: wait until it is complete or quiet.
		if wallNow().Sub(fi.ModTime()) >= tailQuiet || wallNow().After(deadline) {
			if partialExpired(fi.ModTime(), c.opts.PartialLineGrace) {
				*tailKept = false
				c.rep.Dropped.Partial = 1
			} else {
				*tailKept = true
				if err := cp.copyRange(off, size-off); err != nil {
					return off, records, err
				}
			}
			return size, records, nil
		}
		time.Sleep(pollInterval)
	}
}

// openAppendSame opens path for appending and checks that it is the file
// described by want.
func openAppendSame(path string, want os.FileInfo) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil || !sameInode(fi, want) {
		f.Close()
		return nil, fmt.Errorf("%s changed right after the swap: %w", path, ErrTargetReplaced)
	}
	return f, nil
}

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
	// DrainTo > Offset: the bytes [Offset, DrainTo) of the old inode (plus a
	// newline when DrainNewline) are being appended to the new file, which
	// was NewSize bytes long just before.
	DrainTo      int64 `json:"drain_to,omitempty"`
	DrainNewline bool  `json:"drain_newline,omitempty"`
	NewSize      int64 `json:"new_size,omitempty"`
}

// drainResult is what a drain moved.
type drainResult struct {
	records  int64 // records appended
	bytes    int64 // bytes of the old inode consumed
	written  int64 // bytes appended to the new file
	fragment bool  // an unterminated fragment was appended with a newline
	crashed  bool
}

// drain appends to newf what lands in old past jr.Offset, in whole lines,
// updating the journal before every write, until no writer can add to old
// any more: no process has it open for writing (checked with a read lease;
// nobody can open it by name since the rename), or, where leases are not
// available, old has been quiet for drainQuiet. A writer that keeps old open
// is waited for up to drainMax.
//
// With leased, newf carries a write lease: a writer waiting on it has
// finished with old, which ends the drain too.
func drain(ctx context.Context, old, newf *os.File, leased bool, jr *jsonJournal, journalPath string, afterFirst func() error) (drainResult, error) {
	var dr drainResult
	start := wallNow()
	deadline := start.Add(drainMax)
	lastSize, lastChange := int64(-1), start
	chunk := make([]byte, 0, blockSize)
	for {
		if err := ctx.Err(); err != nil {
			return dr, err
		}
		fi, err := old.Stat()
		if err != nil {
			return dr, err
		}
		size, now := fi.Size(), wallNow()
		if size != lastSize {
			lastSize, lastChange = size, now
		}
		var final bool
		switch present, known := openForWriting(old); {
		case leased && leaseWanted(newf):
			final = true // the writer waits to open the new file
		case known && !present:
			final = true // frozen: this pass takes the rest
		case known:
			final = now.After(deadline) // a writer has it open: wait for it
		default:
			final = now.Sub(lastChange) >= drainQuiet || now.After(deadline)
		}
		lr := newLineReader(old, jr.Offset, size)
		for jr.Offset < size {
			chunk = chunk[:0]
			from := jr.Offset
			newline := false
			var recs int64
			for len(chunk) < blockSize {
				line, _, complete, err := lr.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					return dr, err
				}
				if !complete {
					// An unterminated fragment is final only once the
					// old file is quiet (or time is up).
					if len(chunk) == 0 && final {
						chunk = append(append(chunk, line...), '\n')
						newline = true
					}
					break
				}
				if ClassifyLine(line).Record {
					recs++
				}
				chunk = append(chunk, line...)
			}
			if len(chunk) == 0 {
				break
			}
			n := int64(len(chunk))
			if newline {
				n--
			}
			if err := appendJournaled(newf, chunk, from, from+n, newline, jr, journalPath); err != nil {
				dr.crashed = errors.Is(err, errHookCrash)
				return dr, err
			}
			dr.records += recs
			dr.bytes += n
			dr.written += int64(len(chunk))
			dr.fragment = dr.fragment || newline
		}
		if afterFirst != nil {
			if err := afterFirst(); err != nil {
				dr.crashed = true
				return dr, err
			}
			afterFirst = nil
		}
		if final && jr.Offset >= size {
			return dr, nil
		}
		if final {
			slog.Warn("the old file was still being written to when the drain ended",
				"path", jr.Path, "old_file", jr.OldLink)
			return dr, nil
		}
		time.Sleep(pollInterval)
	}
}

// errHookCrash marks an error that came from crashHook through the drain.
var errHookCrash = errors.New("simulated crash")

// appendJournaled records the intent to append old[from, to) in the
// journal, then appends chunk to newf with one write.
func appendJournaled(newf *os.File, chunk []byte, from, to int64, newline bool, jr *jsonJournal, journalPath string) error {
	fi, err := newf.Stat()
	if err != nil {
		return err
	}
	jr.DrainTo, jr.DrainNewline, jr.NewSize = to, newline, fi.Size()
	// Not fsynced: the drain must follow the rename within moments (records
	// written to the new file meanwhile come before the drained ones). A
	// kill leaves this update in the page cache; after a power loss the
	// previous version may come back, and Recover may then append a chunk
	// twice: more, never less.
	data, err := json.Marshal(jr)
	if err != nil {
		return err
	}
	if err := writeFileReplace(journalPath, data, false); err != nil {
		return err
	}
	if err := hook("drain-journaled"); err != nil {
		return fmt.Errorf("%w: %w", errHookCrash, err)
	}
	if _, err := newf.Write(chunk); err != nil {
		return fmt.Errorf("append to %s: %w", newf.Name(), err)
	}
	if err := hook("drain-written"); err != nil {
		return fmt.Errorf("%w: %w", errHookCrash, err)
	}
	jr.Offset, jr.DrainTo, jr.DrainNewline, jr.NewSize = to, 0, false, 0
	return nil
}

// Recover completes or rolls back an interrupted compaction and removes its
// leftovers; see the package comment of json.go.
func (j *JSON) Recover(ctx context.Context) error {
	path, err := j.resolve()
	if err != nil {
		return err
	}
	lock, err := tryLock(j.lockPath)
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer lock.unlock()
	return j.recoverLocked(ctx, path)
}

func (j *JSON) recoverLocked(ctx context.Context, path string) error {
	var jr jsonJournal
	found, err := readJSONFile(j.journalPath, &jr)
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	if found {
		if jr.Path != "" {
			path = jr.Path
		}
		if err := j.recoverJournal(ctx, &jr); err != nil {
			return fmt.Errorf("json target %s: recover %s: %w", j.cfg.Name, path, err)
		}
	} else {
		// A link without a journal: the crash came before the journal was
		// written, so the swap did not happen.
		link := oldLinkName(path)
		if li, err := os.Lstat(link); err == nil {
			cur, err := os.Stat(path)
			if err == nil && sameInode(cur, li) {
				if err := removeDurably(link); err != nil {
					return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
				}
			} else {
				slog.Warn("left in place: old file of an interrupted compaction that is not the target", "target", j.cfg.Name, "path", link)
			}
		}
	}
	dir, base := filepath.Split(path)
	if err := removeTempLeftovers(dir, base); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	// A kill while the journal itself was being written leaves its temp.
	if err := removeTempLeftovers(filepath.Dir(j.journalPath), filepath.Base(j.journalPath)); err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	return nil
}

func (j *JSON) recoverJournal(ctx context.Context, jr *jsonJournal) error {
	li, err := os.Lstat(jr.OldLink)
	if errors.Is(err, os.ErrNotExist) {
		// The drain finished.
		return removeDurably(j.journalPath)
	}
	if err != nil {
		return err
	}
	cur, err := os.Stat(jr.Path)
	curDev, curIno := uint64(0), uint64(0)
	if err == nil {
		curDev, curIno = inodeOf(cur)
	}
	switch {
	case err == nil && curDev == jr.NewDev && curIno == jr.NewIno:
		// The swap happened: drain the old inode into the new file.
		old, err := os.Open(jr.OldLink)
		if err != nil {
			return err
		}
		defer old.Close()
		newf, err := openAppendSame(jr.Path, cur)
		if err != nil {
			return err
		}
		defer newf.Close()
		if jr.DrainTo > jr.Offset {
			written, err := chunkPresent(old, newf, jr)
			if err != nil {
				return err
			}
			if written {
				jr.Offset = jr.DrainTo
			}
			jr.DrainTo, jr.DrainNewline, jr.NewSize = 0, false, 0
		}
		if _, err := drain(ctx, old, newf, false, jr, j.journalPath, nil); err != nil {
			return err
		}
		if err := removeDurably(jr.OldLink); err != nil {
			return err
		}
	case err == nil && sameInode(cur, li):
		// The swap did not happen.
		if err := removeDurably(jr.OldLink); err != nil {
			return err
		}
	default:
		slog.Warn("the target was replaced or removed during an interrupted compaction; its old file is left in place",
			"target", jr.Target, "path", jr.Path, "old_file", jr.OldLink)
	}
	return removeDurably(j.journalPath)
}

// chunkPresent reports whether the drain chunk journaled in jr was appended
// to newf: the bytes old[Offset, DrainTo) (and a newline when DrainNewline)
// at a line start at or after NewSize.
func chunkPresent(old, newf *os.File, jr *jsonJournal) (bool, error) {
	n := jr.DrainTo - jr.Offset
	want := make([]byte, min(n, 256))
	if _, err := old.ReadAt(want, jr.Offset); err != nil {
		return false, fmt.Errorf("read %s: %w", old.Name(), err)
	}
	rd, err := os.Open(newf.Name())
	if err != nil {
		return false, err
	}
	defer rd.Close()
	fi, err := rd.Stat()
	if err != nil {
		return false, err
	}
	limit := min(fi.Size(), jr.NewSize+recoverSearchWindow+n+1)
	lr := newLineReader(rd, jr.NewSize, limit)
	total := n
	if jr.DrainNewline {
		total++
	}
	for {
		_, off, _, err := lr.next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if off+total > fi.Size() {
			return false, nil
		}
		eq, err := rangesEqual(old, jr.Offset, rd, off, n)
		if err != nil {
			return false, err
		}
		if eq && jr.DrainNewline {
			var b [1]byte
			if _, err := rd.ReadAt(b[:], off+n); err != nil || b[0] != '\n' {
				eq = false
			}
		}
		if eq {
			return true, nil
		}
	}
}

// rangesEqual compares a[aoff, aoff+n) with b[boff, boff+n).
func rangesEqual(a *os.File, aoff int64, b *os.File, boff int64, n int64) (bool, error) {
	var ba, bb [4096]byte
	step := int64(256) // a short first step rejects most candidates cheaply
	for n > 0 {
		k := min(n, step)
		if _, err := a.ReadAt(ba[:k], aoff); err != nil {
			return false, err
		}
		if _, err := b.ReadAt(bb[:k], boff); err != nil {
			if err == io.EOF {
				return false, nil
			}
			return false, err
		}
		if !bytes.Equal(ba[:k], bb[:k]) {
			return false, nil
		}
		aoff, boff, n = aoff+k, boff+k, n-k
		step = int64(len(ba))
	}
	return true, nil
}

// Scan reads the file without changing it and reports invalid lines, an
// unterminated last line, records without a numeric timestamp, records of
// an unknown kind (Papyra's readers tolerate them, but a migration should
// know), and leftovers of an interrupted compaction. At most
// maxAnomaliesPerType anomalies of one type are listed, plus a summary.
func (j *JSON) Scan(ctx context.Context) ([]Anomaly, error) {
	path, err := j.resolve()
	if err != nil {
		return nil, err
	}
	a := newAnomalies(j.cfg.Name)
	// Leftovers, unless a compaction is running right now (its temp file
	// and journal are then not leftovers).
	if lock, err := tryLock(j.lockPath); err == nil {
		j.scanLeftovers(a, path)
		lock.unlock()
	} else if !errors.Is(err, ErrBusy) {
		return nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return a.result(), nil
	}
	if err != nil {
		a.add(AnomalyUnreadable, path, func() string { return err.Error() })
		return a.result(), nil
	}
	defer f.Close()
	if err := scanLines(ctx, a, f, path); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		a.add(AnomalyUnreadable, path, func() string { return err.Error() })
	}
	return a.result(), nil
}

func (j *JSON) scanLeftovers(a *anomalies, path string) {
	dir, base := filepath.Split(path)
	if entries, err := os.ReadDir(dir); err == nil {
		prefix := tempPrefix(base)
		for _, e := range entries {
			if len(e.Name()) > len(prefix) && e.Name()[:len(prefix)] == prefix {
				p := filepath.Join(dir, e.Name())
				a.add(AnomalyLeftover, p, func() string { return "temporary file of an interrupted compaction" })
			}
		}
	}
	if _, err := os.Lstat(oldLinkName(path)); err == nil {
		a.add(AnomalyLeftover, oldLinkName(path), func() string {
			return "old file of an interrupted compaction (Recover drains and removes it)"
		})
	}
	if _, err := os.Stat(j.journalPath); err == nil {
		a.add(AnomalyLeftover, j.journalPath, func() string { return "journal of an interrupted compaction (Recover completes it)" })
	}
}
