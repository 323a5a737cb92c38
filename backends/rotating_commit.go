package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Journal states of a rotating compaction (see rotating.go).
const (
	rotStatePrepare = "prepare"
	rotStateCommit  = "commit"
	rotStateDrained = "drained"
)

// rotJournal is the intent journal of one rotating compaction, kept in the
// state directory and always replaced atomically.
type rotJournal struct {
	Version int    `json:"version"`
	State   string `json:"state"`
	// Path is the active file; Staging the staging directory beside it.
	Path    string `json:"path"`
	Staging string `json:"staging"`
	// Placeholder is <path>.<max_files-1> when the compaction creates it
	// empty to stop the writer from rotating.
	Placeholder string `json:"placeholder,omitempty"`
	// Installs are the staged files and their final names, oldest first;
	// the last one is the new active file.
	Installs []rotInstall `json:"installs,omitempty"`
	// Removes are the old files that are not part of the new set.
	Removes []rotRemove `json:"removes,omitempty"`
	// OldActiveLink is a hard link to the old active file; records past
	// CatchUp in it are drained into the new active file.
	OldActiveLink string `json:"old_active_link,omitempty"`
	OldActiveDev  uint64 `json:"old_active_dev,omitempty"`
	OldActiveIno  uint64 `json:"old_active_ino,omitempty"`
	CatchUp       int64  `json:"catch_up"`
	// NewActiveIno and NewActiveSize identify the new active file as staged.
	NewActiveIno  uint64 `json:"new_active_ino,omitempty"`
	NewActiveSize int64  `json:"new_active_size"`
}

type rotInstall struct {
	Staged string `json:"staged"`
	Final  string `json:"final"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Size   int64  `json:"size"`
}

type rotRemove struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// Drain tuning: the drain after the swap polls the old active inode every
// rotDrainPoll, and ends once it has been quiet for rotDrainQuiet (or the
// writer waits on the lease), and in any case after rotDrainMax.
// When no process has the old inode open for writing any more (checked with
// a read lease) and rotDrainSettle has passed since the swap, the drain ends
// at once.
var (
	rotDrainPoll   = 200 * time.Microsecond
	rotDrainSettle = 2 * time.Millisecond
	rotDrainQuiet  = 30 * time.Millisecond
	rotDrainMax    = 2 * time.Second
)

// rotDrainResult is what a drain (and a catch-up) moved.
type rotDrainResult struct {
	records int64 // lines appended
	bytes   int64
	partial int64 // bytes of an unterminated line left behind
	next    int64 // offset after the last whole line consumed
	leased  bool
}

// copyWholeLines appends to w the whole ('\n'-terminated) lines of f in
// [from, to), as they are (they are not validated: they are newer than
// everything the compaction examined, and the next compaction drops what is
// not a record), in large blocks. An unterminated last line is left.
func copyWholeLines(ctx context.Context, f *os.File, from, to int64, w io.Writer) (rotDrainResult, error) {
	res := rotDrainResult{next: from}
	buf := make([]byte, min(int64(blockSize), max(to-from, 1)))
	for res.next < to {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		n := min(int64(len(buf)), to-res.next)
		if m, err := f.ReadAt(buf[:n], res.next); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return res, fmt.Errorf("read %s at %d: %w", f.Name(), res.next, err)
		}
		i := bytes.LastIndexByte(buf[:n], '\n')
		if i < 0 {
			if n < int64(len(buf)) {
				return res, nil // only an unterminated line is left
			}
			buf = make([]byte, 2*len(buf)) // a line longer than the buffer
			continue
		}
		chunk := buf[:i+1]
		if _, err := w.Write(chunk); err != nil {
			return res, err
		}
		res.records += int64(bytes.Count(chunk, []byte{'\n'}))
		res.bytes += int64(len(chunk))
		res.next += int64(len(chunk))
	}
	return res, nil
}

// ---- leases ----

// takeLease puts a write lease on f: until it is released, any other open
// of the file waits in the kernel (up to /proc/sys/fs/lease-break-time).
// It reports false where leases are not available.
func takeLease(f *os.File) bool {
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false
	}
	// No SIGIO on a lease break: the drain polls F_GETLEASE instead.
	unix.FcntlInt(f.Fd(), unix.F_SETOWN, 0)
	return true
}

// leaseWanted reports whether someone waits to open f for writing.
func leaseWanted(f *os.File) bool {
	v, err := unix.FcntlInt(f.Fd(), unix.F_GETLEASE, 0)
	return err == nil && v == unix.F_UNLCK
}

// noWriters reports whether no process has f's file open for writing. It
// reports false where leases are not available.
func noWriters(f *os.File) bool {
	present, known := openForWriting(f)
	return known && !present
}

// openForWriting reports whether some process has f's file open for
// writing (present), by trying to take a read lease on f, which must be
// open read-only; the lease is released at once. known is false where
// leases are not available (NFS, a process without CAP_LEASE that does not
// own the file): then nothing can be told.
func openForWriting(f *os.File) (present, known bool) {
	_, err := unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_RDLCK)
	switch {
	case err == nil:
		unix.FcntlInt(f.Fd(), unix.F_SETOWN, 0)
		releaseLease(f)
		return false, true
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
		return true, true
	}
	return false, false
}

func releaseLease(f *os.File) {
	unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_UNLCK)
}

// ---- drain ----

// rotDedupe skips records already drained before a crash: it walks the
// lines of the new active file after what was staged, in step with the lines
// to drain.
type rotDedupe struct {
	lr   *lineReader
	done bool
}

// seen reports whether line comes next (in order, possibly after lines the
// writer appended) in the new active file.
func (d *rotDedupe) seen(line []byte) bool {
	if d == nil || d.done {
		return false
	}
	for {
		l, _, complete, err := d.lr.next()
		if err != nil || !complete {
			d.done = true
			return false
		}
		if bytes.Equal(l, line) {
			return true
		}
	}
}

// rotAppendWriter appends to the new active file (opened O_APPEND), leaving
// out the records a dedupe has seen there already.
type rotAppendWriter struct {
	f  *os.File
	dd *rotDedupe
}

func (w *rotAppendWriter) Write(p []byte) (int, error) {
	if w.dd != nil && !w.dd.done {
		var keep []byte
		for rest := p; len(rest) > 0; {
			i := bytes.IndexByte(rest, '\n')
			line := rest[:i+1]
			rest = rest[i+1:]
			if !w.dd.seen(line) {
				keep = append(keep, line...)
			}
		}
		if _, err := w.f.Write(keep); err != nil {
			return 0, fmt.Errorf("append to %s: %w", w.f.Name(), err)
		}
		return len(p), nil
	}
	if _, err := w.f.Write(p); err != nil {
		return 0, fmt.Errorf("append to %s: %w", w.f.Name(), err)
	}
	return len(p), nil
}

// drainOld copies to newf the records written to old past from, until the
// writer is done with old: it waits on newf's lease (leased), or no process
// has old open for writing (rotDrainSettle after the swap), or old has been
// quiet for rotDrainQuiet, or rotDrainMax has passed. With dedupeFrom
// >= 0, records already in newf past that offset are not appended again.
func drainOld(ctx context.Context, old *os.File, from int64, newf *os.File, leased bool, dedupeFrom int64) (rotDrainResult, error) {
	res := rotDrainResult{leased: leased, next: from}
	w := &rotAppendWriter{f: newf}
	if dedupeFrom >= 0 {
		fi, err := newf.Stat()
		if err != nil {
			return res, fmt.Errorf("stat %s: %w", newf.Name(), err)
		}
		if fi.Size() > dedupeFrom {
			w.dd = &rotDedupe{lr: newLineReader(newf, dedupeFrom, fi.Size())}
		}
	}
	start := time.Now()
	lastChange := start
	lastSize := int64(-1)
	final := false
	for {
		fi, err := old.Stat()
		if err != nil {
			return res, fmt.Errorf("stat %s: %w", old.Name(), err)
		}
		size := fi.Size()
		if size < res.next {
			// Truncated (a max_files = 1 writer): nothing more to take.
			return res, nil
		}
		if size != lastSize {
			lastSize, lastChange = size, time.Now()
		}
		if size > res.next {
			r, err := copyWholeLines(context.WithoutCancel(ctx), old, res.next, size, w)
			res.records += r.records
			res.bytes += r.bytes
			res.next = r.next
			if err != nil {
				return res, err
			}
		}
		if final {
			res.partial = size - res.next
			return res, nil
		}
		switch {
		case leased && leaseWanted(newf):
			// The writer is done with the old file: it waits to open the
			// new one. One more look, for what it wrote just before.
			final = true
			continue
		case time.Since(start) >= rotDrainSettle && noWriters(old):
			// Nobody writes to the old file and nobody can open it by
			// name any more.
			final = true
			continue
		case time.Since(lastChange) >= rotDrainQuiet, time.Since(start) >= rotDrainMax:
			final = true
			continue
		}
		time.Sleep(rotDrainPoll)
	}
}

// ---- roll forward, cleanup, recovery ----

// rollForward completes a committed swap: installs the staged files still in
// the staging directory (oldest first, the active file last), drains the old
// active file, marks the journal drained and cleans up. old, when not nil, is
// an open descriptor of the old active file. point names the steps (tests).
func (r *Rotating) rollForward(ctx context.Context, jr *rotJournal, old *os.File, point func(string) error) (rotDrainResult, error) {
	var res rotDrainResult
	dir := filepath.Dir(jr.Path)
	var newf *os.File
	leased, installedNow := false, false
	defer func() {
		if newf != nil {
			if leased {
				releaseLease(newf)
			}
			newf.Close()
		}
	}()
	for k, in := range jr.Installs {
		last := k == len(jr.Installs)-1
		if _, err := os.Lstat(in.Staged); errors.Is(err, os.ErrNotExist) {
			continue // installed before
		} else if err != nil {
			return res, fmt.Errorf("stat %s: %w", in.Staged, err)
		}
		if last {
			f, err := os.OpenFile(in.Staged, os.O_RDWR|os.O_APPEND, 0)
			if err != nil {
				return res, fmt.Errorf("open %s: %w", in.Staged, err)
			}
			newf = f
			leased = takeLease(newf)
		}
		if err := os.Rename(in.Staged, in.Final); err != nil {
			return res, fmt.Errorf("install %s as %s: %w", in.Staged, in.Final, err)
		}
		installedNow = last
		if err := point("install:" + filepath.Base(in.Final)); err != nil {
			return res, err
		}
	}
	if err := syncDir(dir); err != nil {
		return res, err
	}
	if jr.OldActiveLink != "" {
		if old == nil {
			f, err := os.Open(jr.OldActiveLink)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return res, fmt.Errorf("open %s: %w", jr.OldActiveLink, err)
			}
			if f != nil {
				defer f.Close()
				old = f
			}
		}
		if old != nil {
			dedupeFrom := int64(-1)
			if newf == nil {
				f, err := os.OpenFile(jr.Path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
				if err != nil {
					return res, fmt.Errorf("open %s: %w", jr.Path, err)
				}
				newf = f
				for range 50 {
					if leased = takeLease(newf); leased {
						break
					}
					time.Sleep(time.Millisecond)
				}
				if fi, err := newf.Stat(); err == nil {
					if _, ino := inodeOf(fi); ino != jr.NewActiveIno {
						r.log.Warn("active file is not the one installed; draining into it anyway", "path", jr.Path)
					}
				}
			}
			if !installedNow {
				dedupeFrom = jr.NewActiveSize
			}
			var err error
			res, err = drainOld(ctx, old, jr.CatchUp, newf, leased, dedupeFrom)
			if err != nil {
				return res, fmt.Errorf("drain %s into %s: %w", jr.OldActiveLink, jr.Path, err)
			}
			if err := newf.Sync(); err != nil {
				return res, fmt.Errorf("sync %s: %w", jr.Path, err)
			}
		}
	}
	if newf != nil {
		if leased {
			releaseLease(newf)
			leased = false
		}
		newf.Close()
		newf = nil
	}
	if err := point("drained"); err != nil {
		return res, err
	}
	jr.State = rotStateDrained
	if err := writeJSONAtomic(r.journalPath(jr.Path), jr); err != nil {
		return res, err
	}
	if err := point("drained-journal"); err != nil {
		return res, err
	}
	return res, r.cleanup(jr, point)
}

// cleanup removes the old files that are not part of the new set (only when
// they are still the journaled inodes; the highest index last, so the writer
// cannot rotate before all are gone), the staging directory and the journal.
func (r *Rotating) cleanup(jr *rotJournal, point func(string) error) error {
	dir := filepath.Dir(jr.Path)
	removes := append([]rotRemove(nil), jr.Removes...)
	sort.SliceStable(removes, func(a, b int) bool { return rotIndex(removes[a].Path) < rotIndex(removes[b].Path) })
	for _, rm := range removes {
		fi, err := os.Lstat(rm.Path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", rm.Path, err)
		}
		if dev, ino := inodeOf(fi); dev != rm.Dev || ino != rm.Ino {
			r.log.Warn("old segment was replaced since the compaction; left in place", "path", rm.Path)
			continue
		}
		if err := os.Remove(rm.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old segment %s: %w", rm.Path, err)
		}
		if err := point("remove:" + filepath.Base(rm.Path)); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(jr.Staging); err != nil {
		return fmt.Errorf("remove staging directory %s: %w", jr.Staging, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := point("cleanup-staging"); err != nil {
		return err
	}
	return removeDurably(r.journalPath(jr.Path))
}

// rotIndex is the set index of a segment name (the number after the last
// dot).
func rotIndex(name string) int {
	i := strings.LastIndexByte(name, '.')
	n := 0
	for _, ch := range name[i+1:] {
		if ch < '0' || ch > '9' {
			return 0
		}
		n = n*10 + int(ch-'0')
	}
	return n
}

// recoverLocked does Recover's work; the caller holds the target's lock.
func (r *Rotating) recoverLocked(ctx context.Context, path string) error {
	jp := r.journalPath(path)
	var jr rotJournal
	found, err := readJSONFile(jp, &jr)
	if err != nil {
		return err
	}
	point := func(name string) error { return rotPoint("recover:" + name) }
	if found {
		if jr.Path != path {
			return fmt.Errorf("journal %s is for %s, not %s: finish it with the old configuration or remove it by hand", jp, jr.Path, path)
		}
		switch jr.State {
		case rotStatePrepare:
			if jr.Staging != "" {
				if err := os.RemoveAll(jr.Staging); err != nil {
					return fmt.Errorf("remove staging directory %s: %w", jr.Staging, err)
				}
			}
			if jr.Placeholder != "" {
				if err := removeIfEmpty(jr.Placeholder); err != nil {
					return err
				}
			}
			if err := point("rollback"); err != nil {
				return err
			}
			if err := removeDurably(jp); err != nil {
				return err
			}
		case rotStateCommit:
			r.log.Info("completing an interrupted compaction", "path", path)
			if _, err := r.rollForward(ctx, &jr, nil, point); err != nil {
				return err
			}
		case rotStateDrained:
			if err := r.cleanup(&jr, point); err != nil {
				return err
			}
		default:
			return fmt.Errorf("journal %s: unknown state %q", jp, jr.State)
		}
	}
	if err := r.removeStagingLeftovers(path, ""); err != nil {
		return err
	}
	if err := removeTempLeftovers(filepath.Dir(path), filepath.Base(path)); err != nil {
		return err
	}
	return removeTempLeftovers(r.cfg.StateDir, filepath.Base(jp))
}

// removeStagingLeftovers removes the staging directories beside path that
// no journal refers to (keep is the one that may stay).
func (r *Rotating) removeStagingLeftovers(path, keep string) error {
	dir, base := filepath.Dir(path), filepath.Base(path)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	prefix := rotStagingPrefix(base)
	removed := false
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if p == keep {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove leftover staging directory %s: %w", p, err)
		}
		removed = true
	}
	if removed {
		return syncDir(dir)
	}
	return nil
}
