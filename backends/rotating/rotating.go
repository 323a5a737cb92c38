package rotating

// The rotating backend: Papyra's RotatingFilePersistence, a set of NDJSON
// files <path> (active), <path>.1 (newest rotated) … <path>.<MaxFiles-1>
// (oldest), compacted from outside the Papyra process while its writer keeps
// appending and rotating.
//
// # What a compaction produces
//
// Exactly what Papyra's own compaction produces (the golden cases in
// testdata/rotating check it byte for byte), except that surviving lines keep
// their stored bytes: the set is read oldest first, lines that are not JSON
// objects are dropped, the retention is applied once over the whole set, and
// the survivors are cut into chunks filled oldest first, a chunk taking lines
// while it stays at most MaxBytes (a chunk holds at least one line). The
// newest MaxFiles chunks are kept (the records of older chunks are dropped and
// counted in Dropped.Count, with a note); the newest chunk becomes <path>,
// the next <path>.1, and so on. Names beyond <path>.<MaxFiles-1> (orphans) are
// neither read nor touched. A set that existed but keeps no record is left as
// one empty active file (Papyra would remove every file; the writer would
// recreate the active file at its next record anyway).
//
// # In place
//
// With Method auto (the default), a set whose survivors are already the
// newest lines of the set, in files the writer could have made, is
// compacted in place instead of rewritten: the segments retention drops
// entirely are unlinked and the head of the one it drops partly is cut out
// of that file (inplace.go). The records are those of the copy; the files'
// boundaries are the writer's, and a file may start with a filler line.
//
// # Reading
//
// Pass 1 (findCut) walks the set newest first (the active file backward,
// then .1 backward, …) offering each line to Cut and parsing only what it
// must: once the retention is done, older lines are counted (newlines) but
// not parsed. Pass 2 (planChunks) walks the kept region forward computing
// the chunk boundaries from line lengths alone, remembering only the last
// MaxFiles chunk starts. Pass 3 (copyChunks) copies the surviving lines of
// the kept chunks into the staged files. Memory
// is constant apart from one bit per line dropped inside the kept region and
// the longest line (pass 1 parses whole lines).
//
// # Report
//
// BeforeRecords counts the records examined, plus the lines older than the
// retention cut that look like records ('{' … '}'; Dropped.Unexamined: not
// parsed; the other non-blank ones are in Dropped.Invalid), plus
// the lines appended during the compaction (AppendedDuring, also in
// AfterRecords). Records of chunks beyond MaxFiles are in Dropped.Count, with
// a note. BeforeBytes is the set at the snapshot plus what was appended;
// AfterBytes what the compaction wrote into the new set.
//
// # Commit protocol
//
// Papyra's compaction unlinks the old set before renaming the new one in, so a
// crash in between loses data. This one never does:
//
//  1. Prepare: a journal in StateDir (state "prepare", written atomically:
//     temp file, fsync, rename, fsync of StateDir) names a staging directory
//     .<base>.watcher-rot-<random> beside <path> (same filesystem). If
//     <path>.<MaxFiles-1> does not exist an empty placeholder is created there:
//     Papyra's writer never rotates while that name exists, so from here on
//     the only thing the writer can do to the set is append to <path>.
//  2. Stage: the new chunks are written into the staging directory (Dir.CreateTemp:
//     O_EXCL, mode and owner of the file they replace), records appended to
//     <path> since the snapshot are copied to the end of the new active chunk
//     (catch-up, up to offset C), each file and the directory are fsynced, and
//     the old active file is hard-linked into the staging directory.
//  3. Check: every name of the set still has the inode (and, for segments, the
//     size) it had at the snapshot; otherwise the writer rotated: everything
//     staged is removed and ErrConcurrentRotation returned, nothing changed.
//  4. Commit point: the journal is rewritten with state "commit", listing each
//     staged file with its final name and inode, the old files to remove with
//     their inodes, the old active link, C, and the new active's inode and
//     size. Then the staged segments are renamed into place oldest first, the
//     directory fsynced, the new active file is renamed over <path> last.
//  5. Drain: records the writer appended to the old active inode after C (it
//     had opened <path> just before the rename) are copied to the end of the
//     new active file. While this runs the new active file carries a write
//     lease (F_SETLEASE F_WRLCK), so the writer's next open of <path> waits
//     in the kernel until the drain is over: the drained records stay ahead of
//     every later record. The drain ends when the writer is seen waiting on
//     the lease, or no process has the old inode open for writing any more
//     (a read lease can be taken on it) once rotDrainSettle has passed, or
//     (where leases are unavailable) the old inode has been quiet for
//     rotDrainQuiet; rotDrainMax bounds it. The new active file is fsynced; the journal becomes
//     "drained".
//  6. Cleanup: old segments that are not part of the new set are moved into
//     the staging directory, checked to be the journaled inodes (anything else
//     is moved back), and the placeholder last among them; the directory is
//     fsynced, the staging directory and the journal are removed.
//
// # Files and directories
//
// Every operation holds the set's directory open from start to end (its
// last component must not be a symbolic link unless FollowSymlinks is set),
// and the state directory and the staging directory too, and does every
// open, create, link, rename, unlink and listing relative to them
// (Dir): a directory renamed away and replaced during a compaction
// redirects nothing. Files are opened O_NONBLOCK|O_NOFOLLOW and checked to
// be regular files: a FIFO, a socket, a device, a directory or a link at a
// name of the set is refused (ErrNotRegular, ErrSymlink) before anything is
// created; Scan reports it as unreadable.
//
// Recover, called at start and before every compaction, reads the journal:
// "prepare" rolls back (staging removed, an empty placeholder removed);
// "commit" rolls forward (renames the staged files still in the staging
// directory, drains the old active link from C, skipping records already
// drained), then does step 6; "drained" does step 6. Every step is idempotent,
// so a crash during Recover is recovered by the next Recover. Staging
// directories and temporary files without a journal are removed.
//
// # What is guaranteed with a live writer
//
// After a SIGKILL at any instant followed by Recover, the set holds the old
// content or the new, plus every record the writer appended meanwhile: never
// less, never a record twice. Lines appended during a compaction are kept as
// they are, unvalidated (they are newer than everything; the next
// compaction drops those that are not records; they may make the active
// file exceed MaxBytes until the writer rotates) and counted, as lines, in
// AppendedDuring.
//
// Not guaranteed: (a) a writer thread that looked <path> up before the swap
// but opens it only after the drain ended (rotDrainSettle, or rotDrainQuiet
// without leases) loses its line; (b)
// when the lease cannot be taken (a filesystem without leases, such as NFS;
// a process without CAP_LEASE that does not own the file), a record the
// writer appended to the old inode at the instant of the swap can land after
// a record written just after it (kept, not lost, order off by one); the same
// holds for records drained by Recover after a crash; (c) an unterminated
// line left in the old active file once the drain ends is a crash leftover
// and is dropped (Dropped.Partial); (d) with MaxFiles = 1 Papyra's writer
// truncates the active file when it is full: a truncation seen during a
// compaction aborts it (ErrConcurrentRotation), one after the swap is the
// writer's own loss; (e) a writer thread that checked for
// <path>.<MaxFiles-1> before the placeholder existed and then stalled
// through the whole compaction before shifting its files could rotate
// between the check of step 3 and the renames of step 4.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// maxRotatingFiles bounds MaxFiles: the set is listed and checked name by
// name.
const maxRotatingFiles = 10000

// Config configures a rotating target. MaxBytes and MaxFiles must be
// the values the Papyra writer is configured with.
type Config struct {
	// Name is the target name, used in reports, anomalies and state files.
	Name string
	// Path is the absolute path of the active file.
	Path string
	// MaxBytes is the size at which the writer rotates, and the largest chunk
	// a compaction writes (a chunk holds at least one line).
	MaxBytes int64
	// MaxFiles is the number of files of the set, the active file included.
	MaxFiles int
	// StateDir holds the journals and locks.
	StateDir string
	// FollowSymlinks allows Path to be a symbolic link; the set is then the
	// link's target and its siblings.
	FollowSymlinks bool
	// Method is backends.MethodAuto (in place where that gives the same
	// records as a rewrite) or backends.MethodCopy (always rewrite). Empty
	// means auto.
	Method string
}

// Set compacts a Papyra rotating file set. It implements Backend.
type Set struct {
	cfg Config
	mu  sync.Mutex
	log *slog.Logger
}

var _ backends.Backend = (*Set)(nil)

// New checks cfg and returns the backend. It touches no file.
func New(cfg Config) (*Set, error) {
	switch {
	case cfg.Path == "":
		return nil, fmt.Errorf("rotating target %q: path is empty", cfg.Name)
	case !filepath.IsAbs(cfg.Path):
		return nil, fmt.Errorf("rotating target %q: path %q is not absolute", cfg.Name, cfg.Path)
	case cfg.MaxBytes <= 0:
		return nil, fmt.Errorf("rotating target %q: max_bytes must be > 0, got %d", cfg.Name, cfg.MaxBytes)
	case cfg.MaxFiles < 1:
		return nil, fmt.Errorf("rotating target %q: max_files must be >= 1, got %d", cfg.Name, cfg.MaxFiles)
	case cfg.MaxFiles > maxRotatingFiles:
		return nil, fmt.Errorf("rotating target %q: max_files must be <= %d, got %d", cfg.Name, maxRotatingFiles, cfg.MaxFiles)
	case cfg.StateDir == "":
		return nil, fmt.Errorf("rotating target %q: state directory is empty", cfg.Name)
	case cfg.Method != "" && cfg.Method != backends.MethodAuto && cfg.Method != backends.MethodCopy:
		return nil, fmt.Errorf("rotating target %q: method %q is not one of auto, copy", cfg.Name, cfg.Method)
	}
	if cfg.Method == "" {
		cfg.Method = backends.MethodAuto
	}
	cfg.Path = filepath.Clean(cfg.Path)
	return &Set{cfg: cfg, log: slog.Default().With("target", cfg.Name, "backend", backends.KindRotating)}, nil
}

// Kind returns KindRotating.
func (r *Set) Kind() string { return backends.KindRotating }

// Close releases nothing: the backend holds no file between calls.
func (r *Set) Close() error { return nil }

// resolve returns the path of the active file: cfg.Path, or the target of the
// link when FollowSymlinks is set and cfg.Path is a link. A path that is a link
// is refused otherwise (ErrSymlink).
func (r *Set) resolve() (string, error) {
	if err := fsx.CheckPath(r.cfg.Path, r.cfg.FollowSymlinks); err != nil {
		return "", err
	}
	if r.cfg.FollowSymlinks {
		fi, err := os.Lstat(r.cfg.Path)
		if err == nil && fi.Mode()&os.ModeSymlink != 0 {
			p, err := filepath.EvalSymlinks(r.cfg.Path)
			if err != nil {
				return "", fmt.Errorf("resolve symbolic link %s: %w", r.cfg.Path, err)
			}
			return p, nil
		}
	}
	return r.cfg.Path, nil
}

// segName is the name of index i of the set whose active file is path: path
// itself for 0, path.i otherwise.
func segName(path string, i int) string {
	if i == 0 {
		return path
	}
	return path + "." + strconv.Itoa(i)
}

// journalName is the name of the journal of the set whose active file is
// path, in the state directory.
func (r *Set) journalName(path string) string {
	return fsx.StateName(backends.KindRotating, r.cfg.Name, path, ".journal")
}

// lockName is the name of the lock of the set whose active file is path, in
// the state directory.
func (r *Set) lockName(path string) string {
	return fsx.StateName(backends.KindRotating, r.cfg.Name, path, ".lock")
}

// journalPath is the path of the journal, for messages.
func (r *Set) journalPath(path string) string {
	return filepath.Join(r.cfg.StateDir, r.journalName(path))
}

// rotDirs are the directories one operation on the set works in, each held
// open for the whole operation: every file operation on the set, its
// staging directory and its state files is relative to them, so that
// renaming a directory away and putting something else in its place during
// the operation redirects nothing.
type rotDirs struct {
	path string   // the active file
	base string   // its name in dir
	dir  *fsx.Dir // the set's directory
	// state is the state directory; nil for an operation that writes no
	// state (a dry run).
	state *fsx.Dir
}

// openSetDir opens the directory of the set whose active file is path. Its
// last component must not be a symbolic link unless FollowSymlinks is set.
// A missing directory is an error wrapping fs.ErrNotExist.
func (r *Set) openSetDir(path string) (*rotDirs, error) {
	d, err := fsx.OpenDir(filepath.Dir(path), r.cfg.FollowSymlinks)
	if err != nil {
		return nil, err
	}
	return &rotDirs{path: path, base: filepath.Base(path), dir: d}, nil
}

// close closes the directories.
func (ds *rotDirs) close() {
	ds.dir.Close()
	if ds.state != nil {
		ds.state.Close()
	}
}

// Stat sums the sizes of the files of the set that exist (<path> and
// <path>.1 … <path>.<MaxFiles-1>; orphans are not counted). Files lists the
// existing ones, oldest first; a missing set has Bytes 0 and no Files.
func (r *Set) Stat(ctx context.Context) (backends.Stat, error) {
	path, err := r.resolve()
	if err != nil {
		return backends.Stat{Bytes: -1}, err
	}
	st := backends.Stat{}
	ds, err := r.openSetDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return backends.Stat{Bytes: -1}, err
	}
	defer ds.close()
	for i := r.cfg.MaxFiles - 1; i >= 0; i-- {
		if i&255 == 0 {
			if err := ctx.Err(); err != nil {
				return backends.Stat{Bytes: -1}, err
			}
		}
		name := segName(path, i)
		fi, err := ds.dir.Stat(segName(ds.base, i))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return backends.Stat{Bytes: -1}, err
		}
		st.Bytes += fi.Size()
		st.Files = append(st.Files, name)
		if fi.ModTime().After(st.ModTime) {
			st.ModTime = fi.ModTime()
		}
	}
	return st, nil
}

// rotRetries is how many times Compact retries by itself after a concurrent
// rotation before returning ErrConcurrentRotation.
var rotRetries = 2

// Compact applies opts.Retention to the set: in place where Method auto
// allows it (inplace.go), else by rewriting it (see the comment at the top
// of rotating.go for the protocol). With opts.DryRun it computes the same
// report, the method that would run included, and writes nothing, not even
// state files.
//
// Cancelling ctx aborts cleanly until the commit point; once the new set is
// being renamed into place the swap is completed whatever ctx says (it takes
// milliseconds).
func (r *Set) Compact(ctx context.Context, opts backends.CompactOptions) (backends.Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := backends.Report{Target: r.cfg.Name, Backend: backends.KindRotating, DryRun: opts.DryRun}
	if err := opts.Retention.Validate(); err != nil {
		return rep, fmt.Errorf("rotating target %q: %w", r.cfg.Name, err)
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	path, err := r.resolve()
	if err != nil {
		return rep, err
	}
	ds, err := r.openSetDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		// No directory, no set: nothing to compact.
		rep.BeforeBytes, rep.AfterBytes = backends.Int64(0), backends.Int64(0)
		rep.Finish()
		return rep, nil
	}
	if err != nil {
		return rep, err
	}
	defer ds.close()
	if !opts.DryRun {
		if ds.state, err = fsx.OpenStateDir(r.cfg.StateDir); err != nil {
			return rep, err
		}
		lock, err := ds.state.TryLock(r.lockName(path))
		if err != nil {
			return rep, err
		}
		defer lock.Unlock()
		if err := r.recoverLocked(ctx, ds); err != nil {
			return rep, fmt.Errorf("recover %s before compacting: %w", path, err)
		}
	}
	forceCopy := false
	var notes []string
	for attempt := 0; ; attempt++ {
		c := &rotCompaction{r: r, ds: ds, path: path, opts: opts, forceCopy: forceCopy, notes: append([]string(nil), notes...)}
		rep, err = c.run(ctx)
		var fb *rotFallback
		if errors.As(err, &fb) && !forceCopy && ctx.Err() == nil {
			// In place turned out impossible once begun: copy instead.
			r.log.Debug("compaction in place not possible; copying", "path", path, "why", fb.note)
			forceCopy, notes = true, append(notes, fb.note)
			attempt--
			continue
		}
		if errors.Is(err, backends.ErrConcurrentRotation) && attempt < rotRetries && ctx.Err() == nil {
			r.log.Debug("writer rotated during compaction; retrying", "path", path, "attempt", attempt+1)
			continue
		}
		return rep, err
	}
}

// Recover completes or rolls back an interrupted compaction of the set and
// removes its leftovers (staging directories, temporary files, placeholder).
func (r *Set) Recover(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	path, err := r.resolve()
	if err != nil {
		return err
	}
	ds, err := r.openSetDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no directory: nothing to recover in it
	}
	if err != nil {
		return err
	}
	defer ds.close()
	ds.state, err = fsx.OpenDir(r.cfg.StateDir, true)
	if errors.Is(err, fs.ErrNotExist) {
		// Nothing was ever journaled; only staging leftovers can exist.
		if err := removeStagingLeftovers(ds.dir, ds.base); err != nil {
			return err
		}
		return ds.dir.RemoveTemps(ds.base)
	}
	if err != nil {
		return err
	}
	lock, err := ds.state.TryLock(r.lockName(path))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return r.recoverLocked(ctx, ds)
}
