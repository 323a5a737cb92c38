package jsonfile

// The json backend: one NDJSON file that Papyra appends to.
//
// # Compaction
//
// A compaction reads the file in two passes and never holds more than a few
// blocks (BlockSize, 1 MiB) plus the longest line in memory:
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
//     catch-up offset goes to the new file in whole lines, one chunk at a
//     time, into a slot reserved at the end of the new file's own bytes
//     (swap.go states the protocol step by step), until no process has the
//     old inode open for writing (see below); then the link and the journal
//     are removed. From before the rename to the end of the drain the new
//     file carries a write lease (F_SETLEASE F_WRLCK, on the only descriptor
//     open on it), so a writer's open of the path waits in the kernel until
//     the drain is over (milliseconds).
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
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// Tunables of the swap; tests shrink them.
var (
	// drainQuiet is how long the old inode must stay unchanged after the
	// swap before the drain ends.
	drainQuiet = 60 * time.Millisecond
	// drainMax bounds the drain.
	drainMax = 5 * time.Second
	// drainSettle is the shortest drain: an open of the path that resolved
	// to the old inode just before the rename has completed by then.
	drainSettle = 10 * time.Millisecond
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

// Config configures a json target.
type Config struct {
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
	// Method is backends.MethodAuto (in place where that gives the same
	// records as a rewrite, see inplace.go) or backends.MethodCopy (always
	// rewrite). Empty means auto.
	Method string
}

// File is the backend of one Papyra JSON file (backend "json").
type File struct {
	cfg Config
	// stateDir holds the journal and the lock (the file's own directory
	// when none is configured); journalPath and lockPath are their paths.
	stateDir    string
	journalPath string
	lockPath    string
	headcutPath string

	// mu guards index, the block index of the file kept between
	// compactions for in-place compaction (inplace.go), and compacted,
	// set once this backend has compacted in place.
	mu        sync.Mutex
	index     ndjson.Index
	compacted bool
}

var _ backends.Backend = (*File)(nil)

// New returns the backend for cfg. It touches nothing on disk.
func New(cfg Config) (*File, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("json target %q: path is empty", cfg.Name)
	}
	if !filepath.IsAbs(cfg.Path) {
		return nil, fmt.Errorf("json target %q: path %q is not absolute", cfg.Name, cfg.Path)
	}
	cfg.Path = filepath.Clean(cfg.Path)
	switch cfg.Method {
	case "":
		cfg.Method = backends.MethodAuto
	case backends.MethodAuto, backends.MethodCopy:
	default:
		return nil, fmt.Errorf("json target %q: method %q is not one of auto, copy", cfg.Name, cfg.Method)
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(cfg.Path)
	}
	dir := cfg.StateDir
	prefix := ""
	if dir == "" {
		dir = filepath.Dir(cfg.Path)
		prefix = "."
	}
	return &File{
		cfg:         cfg,
		stateDir:    dir,
		journalPath: filepath.Join(dir, prefix+fsx.StateName(backends.KindJSON, cfg.Name, cfg.Path, ".journal")),
		lockPath:    filepath.Join(dir, prefix+fsx.StateName(backends.KindJSON, cfg.Name, cfg.Path, ".lock")),
		headcutPath: filepath.Join(dir, prefix+fsx.StateName(backends.KindJSON, cfg.Name, cfg.Path, ".headcut")),
	}, nil
}

// Kind returns KindJSON.
func (j *File) Kind() string { return backends.KindJSON }

// Close releases nothing: the backend holds no open files between calls.
func (j *File) Close() error { return nil }

// resolve returns the path to operate on: the configured path, or the file
// it links to when symlinks are followed. A symlink is refused otherwise.
func (j *File) resolve() (string, error) {
	if err := fsx.CheckPath(j.cfg.Path, j.cfg.FollowSymlinks); err != nil {
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

// Stat returns the file's size and modification time; a missing file is 0
// bytes.
func (j *File) Stat(ctx context.Context) (backends.Stat, error) {
	st := backends.Stat{Files: []string{j.cfg.Path}}
	fi, err := os.Stat(j.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return backends.Stat{Bytes: -1, Files: st.Files}, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
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
	dropped   backends.Dropped
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
func pass1(ctx context.Context, f *os.File, end int64, cut *backends.Cut, progress func(int64)) (scanResult, error) {
	if cut.Retention().MaxRecords != nil || cut.Retention().MaxTotalBytes != nil || end < parallelMin || runtime.GOMAXPROCS(0) < 2 {
		return pass1Range(ctx, f, 0, end, cut, progress)
	}
	mid, err := ndjson.LastLineEnd(f, end/2)
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
func pass1Range(ctx context.Context, f *os.File, start, end int64, cut *backends.Cut, progress func(int64)) (scanResult, error) {
	res := scanResult{}
	var read int64
	lastReport := end
	err := ndjson.ReadBackward(ctx, f, start, end, func(line []byte, off int64) bool {
		info := ndjson.ClassifyLine(line[:len(line)-1])
		if info.Record {
			res.examined++
		}
		size := int64(len(line))
		r := cut.Offer(info, size)
		if r == backends.Kept {
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
		if progress != nil && lastReport-off >= int64(ndjson.BlockSize) {
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
func keepInRegion(cut *backends.Cut, info backends.LineInfo) bool {
	if !info.Record {
		return false
	}
	if cut.Retention().MaxAgeSeconds != nil && (!info.HasTimestamp || info.Timestamp < cut.Cutoff()) {
		return false
	}
	return true
}

// Compact applies opts.Retention to the file; see the package comment of
// json.go for the protocol and what the report counts.
func (j *File) Compact(ctx context.Context, opts backends.CompactOptions) (backends.Report, error) {
	rep := backends.Report{Target: j.cfg.Name, Backend: backends.KindJSON, DryRun: opts.DryRun}
	if err := opts.Retention.Validate(); err != nil {
		return rep, fmt.Errorf("json target %s: retention: %w", j.cfg.Name, err)
	}
	path, err := j.resolve()
	if err != nil {
		return rep, err
	}
	files, err := j.openFiles(path, !opts.DryRun)
	if errors.Is(err, os.ErrNotExist) {
		// No directory, no file: an empty target.
		rep.BeforeBytes, rep.AfterBytes = backends.Int64(0), backends.Int64(0)
		rep.Method = backends.MethodNone
		rep.Finish()
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer files.close()
	if !opts.DryRun {
		lock, err := files.state.TryLock(files.lock)
		if err != nil {
			return rep, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
		}
		defer lock.Unlock()
		if err := j.recoverLocked(ctx, files); err != nil {
			return rep, err
		}
	}
	c := &compaction{j: j, files: files, path: path, opts: opts, rep: &rep}
	if j.cfg.Method == backends.MethodAuto {
		done, err := c.inPlace(ctx)
		if err != nil {
			return rep, fmt.Errorf("json target %s: compact %s in place: %w", j.cfg.Name, path, err)
		}
		if done {
			rep.Finish()
			return rep, nil
		}
	}
	if err := c.run(ctx); err != nil {
		return rep, fmt.Errorf("json target %s: compact %s: %w", j.cfg.Name, path, err)
	}
	rep.Finish()
	return rep, nil
}

// compaction is one run of Compact.
type compaction struct {
	j     *File
	files *jsonFiles
	path  string
	opts  backends.CompactOptions
	rep   *backends.Report
	total int64
	done  int64

	src     *os.File
	srcInfo os.FileInfo
	tmp     *os.File
	tmpName string // tmp's name in the target's directory
	crashed bool   // a crash hook fired: leave everything as it is
	linked  bool   // the old link exists
	swapped bool   // the rename happened
}

func (c *compaction) progress(n int64) {
	c.done += n
	if c.opts.Progress != nil {
		c.opts.Progress(min(c.done, c.total), c.total)
	}
}

func (c *compaction) crash(point string) error {
	if err := fsx.CrashPoint(point); err != nil {
		c.crashed = true
		return err
	}
	return nil
}

func (c *compaction) run(ctx context.Context) error {
	rep := c.rep
	src, fi, err := c.files.dir.OpenRegular(c.files.base, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		rep.BeforeBytes, rep.AfterBytes = backends.Int64(0), backends.Int64(0)
		rep.Method = backends.MethodNone
		return nil
	}
	if err != nil {
		return err
	}
	defer src.Close()
	c.src, c.srcInfo = src, fi
	size := fi.Size()
	c.total = size

	// The snapshot is the file up to its last complete line now; the cut
	// is found newest first, and the older lines are only counted, while
	// the survivors are copied.
	end, err := ndjson.LastLineEnd(src, size)
	if err != nil {
		return err
	}
	cut := c.opts.Retention.NewCut(c.opts.Now)
	res, err := pass1(ctx, src, end, cut, c.progress)
	if err != nil {
		return err
	}
	unread := countUnreadInBackground(ctx, src, res.unexEnd)
	defer unread.stop()
	c.done = size - res.survStart
	c.total = size + res.keptBytes

	rep.Dropped = res.dropped
	tailKept, tailBytes := false, size-end
	if tailBytes > 0 {
		if ndjson.PartialExpired(fi.ModTime(), c.opts.PartialLineGrace) {
			rep.Dropped.Partial = 1
		} else {
			tailKept = true
		}
	}

	if c.opts.DryRun {
		unex, err := unread.wait()
		if err != nil {
			return err
		}
		after := res.keptBytes
		if tailKept {
			after += tailBytes
		}
		c.report(res, unex, size, after, 0, drainResult{})
		return nil
	}

	defer c.removeTemp()
	tmp, tmpInfo, off, appended, err := c.writeNew(ctx, cut, res, end, &tailKept)
	if err != nil {
		return err
	}
	unex, err := unread.wait()
	if err != nil {
		return err
	}
	dr, err := c.swapIn(ctx, tmp, tmpInfo, off, nil)
	if err != nil {
		return err
	}
	if c.opts.Progress != nil {
		c.total = max(c.total, c.done)
		c.opts.Progress(c.total, c.total)
	}
	c.report(res, unex, max(off, size)+dr.bytes, tmpInfo.Size()+dr.written, appended+dr.records, dr)
	return nil
}

// writeNew writes the new file: the survivors of the snapshot [0, end),
// then the complete lines appended since (catch-up), and fsyncs it. It
// returns the file, its FileInfo, the offset of the old file up to which
// everything is settled, and how many records the catch-up copied. The
// caller's removeTemp removes the file unless it took the target's place.
// Where the survivors would not fit the free space it creates nothing
// (checkSpace, ErrNoSpace).
func (c *compaction) writeNew(ctx context.Context, cut *backends.Cut, res scanResult, end int64, tailKept *bool) (*os.File, os.FileInfo, int64, int64, error) {
	if err := c.checkSpace(res.keptBytes, end, *tailKept); err != nil {
		return nil, nil, 0, 0, err
	}
	tmp, err := c.createTemp()
	if err != nil {
		return nil, nil, 0, 0, err
	}
	fail := func(err error) (*os.File, os.FileInfo, int64, int64, error) { return nil, nil, 0, 0, err }
	if err := c.crash("temp-created"); err != nil {
		return fail(err)
	}
	cp := ndjson.NewCopier(ctx, c.src, tmp, ndjson.BlockSize, c.opts.WaitIO, c.progress)
	if err := copySurvivors(ctx, cp, c.src, cut, res, end); err != nil {
		return fail(err)
	}
	if err := c.crash("survivors-copied"); err != nil {
		return fail(err)
	}
	off, appended, err := c.catchUp(ctx, cp, end, tailKept)
	if err != nil {
		return fail(err)
	}
	if *tailKept {
		c.rep.Dropped.Partial = 0
	}
	if err := cp.Flush(); err != nil {
		return fail(err)
	}
	if err := c.crash("caught-up"); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(fmt.Errorf("sync %s: %w", tmp.Name(), err))
	}
	tmpInfo, err := tmp.Stat()
	if err != nil {
		return fail(err)
	}
	return tmp, tmpInfo, off, appended, nil
}

// report fills in the counts of the report; see the package comment for
// what they mean.
func (c *compaction) report(res scanResult, unex unreadCount, before, after, appended int64, dr drainResult) {
	rep := c.rep
	rep.Method = backends.MethodCopy
	rep.Dropped.Unexamined = unex.shaped
	rep.Dropped.Invalid += unex.other
	rep.AppendedDuring = appended
	rep.BeforeRecords = res.examined + unex.shaped + appended
	rep.AfterRecords = res.kept + appended
	rep.BeforeBytes = backends.Int64(before)
	rep.AfterBytes = backends.Int64(after)
	if dr.fragment {
		rep.Notes = append(rep.Notes, "an unterminated line written to the old file during the swap was kept with a newline added")
	}
}

// unreadCount is what CountUnread found in the lines older than the cut.
type unreadCount struct {
	shaped, other int64 // lines shaped like records, other non-blank lines
	err           error
}

// unreadCounter counts the lines older than the cut in the background:
// they need no other work.
type unreadCounter struct {
	cancel context.CancelFunc
	result chan unreadCount
}

func countUnreadInBackground(ctx context.Context, src *os.File, end int64) *unreadCounter {
	cctx, cancel := context.WithCancel(ctx)
	u := &unreadCounter{cancel: cancel, result: make(chan unreadCount, 1)}
	go func() {
		shaped, other, err := ndjson.CountUnread(cctx, src, end)
		u.result <- unreadCount{shaped, other, err}
	}()
	return u
}

// wait returns the count; it may be called more than once.
func (u *unreadCounter) wait() (unreadCount, error) {
	r := <-u.result
	u.result <- r
	return r, r.err
}

// stop cancels the count and waits for it to end.
func (u *unreadCounter) stop() {
	u.cancel()
	u.wait()
}

// createTemp creates the temporary file that becomes the new file, in the
// target's directory, with the mode and owner of the file compacted.
func (c *compaction) createTemp() (*os.File, error) {
	tmp, name, err := c.files.dir.CreateTemp(c.files.base, c.srcInfo)
	if err != nil {
		return nil, err
	}
	c.tmp, c.tmpName = tmp, name
	return tmp, nil
}

// removeTemp closes and removes the temporary file unless it took the
// target's place or a simulated crash must leave everything as it is.
func (c *compaction) removeTemp() {
	if c.tmp == nil || c.crashed {
		return
	}
	c.tmp.Close()
	if !c.swapped {
		c.files.dir.Remove(c.tmpName)
	}
}

// checkTarget fails with ErrTargetReplaced when the path no longer holds
// the file being compacted, or the file shrank below off.
func (c *compaction) checkTarget(off int64) error {
	cur, err := c.files.dir.Lstat(c.files.base)
	if err != nil || !fsx.SameInode(cur, c.srcInfo) {
		return fmt.Errorf("%s: %w", c.path, backends.ErrTargetReplaced)
	}
	if cur.Size() < off {
		return fmt.Errorf("%s shrank from %d to %d bytes: %w", c.path, off, cur.Size(), backends.ErrTargetReplaced)
	}
	return nil
}

// copySurvivors copies the surviving lines of [res.survStart, end).
func copySurvivors(ctx context.Context, cp *ndjson.Copier, src *os.File, cut *backends.Cut, res scanResult, end int64) error {
	if !res.overflow {
		pos := res.survStart
		for _, h := range res.holes {
			if h.start > pos {
				if err := cp.CopyRange(pos, h.start-pos); err != nil {
					return err
				}
			}
			pos = h.end
		}
		if end > pos {
			return cp.CopyRange(pos, end-pos)
		}
		return nil
	}
	lr := ndjson.NewReader(src, res.survStart, end)
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, _, _, err := lr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if keepInRegion(cut, ndjson.ClassifyLine(line[:len(line)-1])) {
			if err := cp.Write(line); err != nil {
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
func (c *compaction) catchUp(ctx context.Context, cp *ndjson.Copier, off int64, tailKept *bool) (int64, int64, error) {
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
			return off, records, fmt.Errorf("%s shrank from %d to %d bytes: %w", c.path, off, size, backends.ErrTargetReplaced)
		}
		start := off
		lr := ndjson.NewReader(c.src, off, size)
		for {
			line, _, complete, err := lr.Next()
			if err == io.EOF || (err == nil && !complete) {
				break
			}
			if err != nil {
				return off, records, err
			}
			if ndjson.ClassifyLine(line).Record {
				records++
			}
			off += int64(len(line))
		}
		if off > start {
			if err := cp.CopyRange(start, off-start); err != nil {
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
			if ndjson.PartialExpired(fi.ModTime(), c.opts.PartialLineGrace) {
				*tailKept = false
				c.rep.Dropped.Partial = 1
			} else {
				*tailKept = true
				if err := cp.CopyRange(off, size-off); err != nil {
					return off, records, err
				}
			}
			return size, records, nil
		}
		time.Sleep(pollInterval)
	}
}

// Scan reads the file without changing it and reports invalid lines, an
// unterminated last line, records without a numeric timestamp, records of
// an unknown kind (Papyra's readers tolerate them, but a migration should
// know), and leftovers of an interrupted compaction. At most
// MaxAnomaliesPerType anomalies of one type are listed, plus a summary.
func (j *File) Scan(ctx context.Context) ([]backends.Anomaly, error) {
	path, err := j.resolve()
	if err != nil {
		return nil, err
	}
	a := ndjson.NewAnomalies(j.cfg.Name)
	files, err := j.openFiles(path, true)
	if errors.Is(err, os.ErrNotExist) {
		return a.Result(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer files.close()
	// Leftovers, unless a compaction is running right now (its temp file
	// and journal are then not leftovers).
	if lock, err := files.state.TryLock(files.lock); err == nil {
		j.scanLeftovers(a, files)
		lock.Unlock()
	} else if !errors.Is(err, backends.ErrBusy) {
		return nil, err
	}
	f, _, err := files.dir.OpenRegular(files.base, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return a.Result(), nil
	}
	if err != nil {
		a.Add(backends.AnomalyUnreadable, path, func() string { return err.Error() })
		return a.Result(), nil
	}
	defer f.Close()
	if err := ndjson.ScanLines(ctx, a, f, path); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		a.Add(backends.AnomalyUnreadable, path, func() string { return err.Error() })
	}
	return a.Result(), nil
}

func (j *File) scanLeftovers(a *ndjson.Anomalies, files *jsonFiles) {
	if entries, err := files.dir.ReadDir(); err == nil {
		prefix := fsx.TempPrefix(files.base)
		for _, e := range entries {
			switch {
			case strings.HasPrefix(e.Name(), prefix) && len(e.Name()) > len(prefix):
				a.Add(backends.AnomalyLeftover, files.dir.PathOf(e.Name()), func() string { return "temporary file of an interrupted compaction" })
			case isOldLinkName(e.Name(), files.base):
				a.Add(backends.AnomalyLeftover, files.dir.PathOf(e.Name()), func() string {
					return "old file of an interrupted compaction (Recover drains and removes it)"
				})
			}
		}
	}
	if _, err := files.state.Lstat(files.journal); err == nil {
		a.Add(backends.AnomalyLeftover, j.journalPath, func() string { return "journal of an interrupted compaction (Recover completes it)" })
	}
	var h ndjson.HeadCut
	if found, _ := files.state.ReadSlot(files.headcut, &h); found {
		a.Add(backends.AnomalyLeftover, j.headcutPath, func() string {
			return "journal of an interrupted in-place compaction (Recover repairs the head of the file)"
		})
	}
}
