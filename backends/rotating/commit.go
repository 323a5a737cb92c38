package rotating

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
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
	// InPlace is the plan of an in-place compaction (state "inplace",
	// inplace.go).
	InPlace *rotInPlace `json:"in_place,omitempty"`
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
// rotDrainPoll. It ends once nothing can write to the old inode any more
// (fsx.WritersGone) and rotDrainSettle has passed since the swap (an open
// of the path that resolved to the old inode just before the swap has
// completed by then); where that cannot be told, once the old inode has
// been quiet for rotDrainQuiet. In any case it ends after rotDrainMax.
var (
	rotDrainPoll   = 200 * time.Microsecond
	rotDrainSettle = 10 * time.Millisecond
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

// wholeLineWriter is a writer that must get each line in one Write: the
// drain's appends to the new active file, where a line written in pieces
// could be torn by a kill between them (the writer then appends to the
// fragment) or, without a lease, have a writer's line land between them.
type wholeLineWriter interface{ wholeLinesOnly() }

// copyWholeLines appends to w the whole ('\n'-terminated) lines of f in
// [from, to), as they are (they are not validated: they are newer than
// everything the compaction examined, and the next compaction drops what is
// not a record), in large blocks. An unterminated last line is left. A
// line longer than a block is found first, then copied to w a block at a
// time, never held in memory whole; only a wholeLineWriter gets it in one
// Write, read into memory whole.
func copyWholeLines(ctx context.Context, f *os.File, from, to int64, w io.Writer) (rotDrainResult, error) {
	res := rotDrainResult{next: from}
	buf := make([]byte, min(int64(ndjson.BlockSize), max(to-from, 1)))
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
			// A line longer than the buffer: look for its end with the
			// buffer as it is, so that an unterminated one (a write in
			// flight, or a crash leftover) is never held in memory.
			nl, err := nextNewline(f, res.next+n, to, buf)
			if err != nil {
				return res, err
			}
			if nl < 0 {
				return res, nil // only an unterminated line is left
			}
			if _, whole := w.(wholeLineWriter); whole {
				buf = make([]byte, nl+1-res.next) // the whole line, to write it at once
				continue
			}
			if w != io.Discard {
				if err := copyPieces(ctx, f, res.next, nl+1, w, buf); err != nil {
					return res, err
				}
			}
			res.records++
			res.bytes += nl + 1 - res.next
			res.next = nl + 1
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

// copyPieces writes the bytes [from, to) of f to w, reading them through
// buf a buffer at a time.
func copyPieces(ctx context.Context, f *os.File, from, to int64, w io.Writer, buf []byte) error {
	for from < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), to-from)
		if m, err := f.ReadAt(buf[:n], from); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read %s at %d: %w", f.Name(), from, err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		from += n
	}
	return nil
}

// nextNewline returns the offset of the first '\n' of f in [from, to), or
// -1, reading with buf.
func nextNewline(f *os.File, from, to int64, buf []byte) (int64, error) {
	for from < to {
		n := min(int64(len(buf)), to-from)
		if m, err := f.ReadAt(buf[:n], from); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return -1, fmt.Errorf("read %s at %d: %w", f.Name(), from, err)
		}
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return from + int64(i), nil
		}
		from += n
	}
	return -1, nil
}

// ---- leases ----

// ---- drain ----

// rotDedupe skips records already drained before a crash: it walks the
// lines of the new active file after what was staged, in step with the lines
// to drain.
type rotDedupe struct {
	lr   *ndjson.Reader
	done bool
}

// seen reports whether line comes next (in order, possibly after lines the
// writer appended) in the new active file.
func (d *rotDedupe) seen(line []byte) bool {
	if d == nil || d.done {
		return false
	}
	for {
		l, _, complete, err := d.lr.Next()
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

func (w *rotAppendWriter) wholeLinesOnly() {}

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

// newAppendWriter returns the writer a drain appends to newf through: with
// dedupeFrom >= 0, it leaves out the records already in newf past that
// offset.
func newAppendWriter(newf *os.File, dedupeFrom int64) (*rotAppendWriter, error) {
	w := &rotAppendWriter{f: newf}
	if dedupeFrom >= 0 {
		fi, err := newf.Stat()
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", newf.Name(), err)
		}
		if fi.Size() > dedupeFrom {
			w.dd = &rotDedupe{lr: ndjson.NewReader(newf, dedupeFrom, fi.Size())}
		}
	}
	return w, nil
}

// drainOld copies to newf the records written to old past from, until the
// writer is done with old: it waits on newf's lease (leased), or no process
// has old open for writing (rotDrainSettle after the swap), or old has been
// quiet for rotDrainQuiet, or rotDrainMax has passed. With dedupeFrom
// >= 0, records already in newf past that offset are not appended again.
func drainOld(ctx context.Context, old *os.File, from int64, newf *os.File, leased bool, dedupeFrom int64) (rotDrainResult, error) {
	res := rotDrainResult{leased: leased, next: from}
	w, err := newAppendWriter(newf, dedupeFrom)
	if err != nil {
		return res, err
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
		// Decided before the next look measures the old file, so that the
		// last look takes whatever was written before the decision.
		done, known := fsx.WritersGone(old, newf, leased)
		timeUp := time.Since(start) >= rotDrainMax
		switch {
		case known && done:
			// Nothing can add to the old file any more: one more look
			// takes the rest.
			final = time.Since(start) >= rotDrainSettle
		case known:
			// A writer has it open (a stalled one, maybe): wait for it.
			if final = timeUp; final {
				slog.Warn("a writer still had the old active file open when the drain ended; what it writes from now on is lost",
					"file", old.Name(), "waited", rotDrainMax)
			}
		default:
			final = timeUp || time.Since(lastChange) >= rotDrainQuiet
		}
		if final {
			continue
		}
		time.Sleep(rotDrainPoll)
	}
}

// ---- roll forward, cleanup, recovery ----

// entryIn returns the name of p in the directory dir. A journal naming a
// file anywhere but where the compaction puts it is refused, never followed.
func entryIn(dir, p string) (string, error) {
	name := filepath.Base(p)
	if filepath.Dir(p) != dir || fsx.CheckEntryName(name) != nil {
		return "", fmt.Errorf("journal names %s, which is not in %s", p, dir)
	}
	return name, nil
}

// rollForward completes a committed swap: installs the staged files still in
// the staging directory (oldest first, the active file last), drains the old
// active file, marks the journal drained and cleans up. old, when not nil, is
// an open descriptor of the old active file, and staging, when not nil, the
// open staging directory. point names the steps (tests).
func (r *Set) rollForward(ctx context.Context, ds *rotDirs, jr *rotJournal, old *os.File, staging *fsx.Dir, point func(string) error) (rotDrainResult, error) {
	var res rotDrainResult
	staging, closeStaging, err := openStaging(ds, jr, staging)
	if err != nil {
		return res, err
	}
	defer closeStaging()
	na := &rotNewActive{}
	defer na.close()
	installedNow, err := installStaged(ds, jr, staging, na, point)
	if err != nil {
		return res, err
	}
	if err := ds.dir.Sync(); err != nil {
		return res, err
	}
	if jr.OldActiveLink != "" {
		if res, err = r.drainOldActive(ctx, ds, jr, staging, old, na, installedNow); err != nil {
			return res, err
		}
	}
	na.close()
	if err := point("drained"); err != nil {
		return res, err
	}
	jr.State = rotStateDrained
	if err := ds.state.WriteJSON(r.journalName(jr.Path), jr); err != nil {
		return res, err
	}
	if err := point("drained-journal"); err != nil {
		return res, err
	}
	return res, r.cleanup(ds, jr, point)
}

// rotNewActive is the new active file while a roll-forward drains into it,
// with the write lease that holds the writer off.
type rotNewActive struct {
	f      *os.File
	leased bool
}

// close releases the lease and closes the file; it may be called more than
// once.
func (a *rotNewActive) close() {
	if a.f == nil {
		return
	}
	if a.leased {
		fsx.ReleaseLease(a.f)
		a.leased = false
	}
	a.f.Close()
	a.f = nil
}

// openStaging returns the staging directory jr names: staging itself when
// the caller has it open, else the directory opened here (closeIt closes
// it), or nil when a cleanup removed it (everything was installed).
func openStaging(ds *rotDirs, jr *rotJournal, staging *fsx.Dir) (_ *fsx.Dir, closeIt func(), err error) {
	closeIt = func() {}
	stagingName, err := entryIn(ds.dir.Path, jr.Staging)
	if err != nil {
		return nil, closeIt, err
	}
	if staging != nil {
		return staging, closeIt, nil
	}
	staging, err = ds.dir.OpenSubdir(stagingName)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, closeIt, nil // removed by a cleanup: everything was installed
	case err != nil:
		return nil, closeIt, err
	}
	return staging, func() { staging.Close() }, nil
}

// installStaged renames the staged files still in the staging directory to
// their final names, oldest first. Before the new active file is renamed
// over <path> it is opened into na and leased, so that the writer's next
// open waits until the drain is over. installedNow reports whether the new
// active file was installed by this call (not before a crash).
func installStaged(ds *rotDirs, jr *rotJournal, staging *fsx.Dir, na *rotNewActive, point func(string) error) (installedNow bool, err error) {
	for k, in := range jr.Installs {
		last := k == len(jr.Installs)-1
		stagedName, err := entryIn(jr.Staging, in.Staged)
		if err != nil {
			return false, err
		}
		finalName, err := entryIn(ds.dir.Path, in.Final)
		if err != nil {
			return false, err
		}
		if staging == nil {
			continue
		}
		if _, err := staging.Lstat(stagedName); errors.Is(err, os.ErrNotExist) {
			continue // installed before
		} else if err != nil {
			return false, err
		}
		if last {
			f, _, err := staging.OpenRegular(stagedName, os.O_RDWR|os.O_APPEND, 0)
			if err != nil {
				return false, err
			}
			na.f = f
			na.leased = fsx.TakeLease(f)
		}
		if err := staging.RenameTo(stagedName, ds.dir, finalName); err != nil {
			return false, fmt.Errorf("install: %w", err)
		}
		installedNow = last
		if err := point("install:" + finalName); err != nil {
			return false, err
		}
	}
	return installedNow, nil
}

// drainOldActive drains the old active file (old, or else the link to it in
// the staging directory) from the catch-up offset into the new active file
// (na, opened and leased here when installStaged did not), skipping the
// records a drain before a crash appended already, and fsyncs it.
func (r *Set) drainOldActive(ctx context.Context, ds *rotDirs, jr *rotJournal, staging *fsx.Dir, old *os.File, na *rotNewActive, installedNow bool) (rotDrainResult, error) {
	var res rotDrainResult
	linkName, err := entryIn(jr.Staging, jr.OldActiveLink)
	if err != nil {
		return res, err
	}
	if old == nil && staging != nil {
		f, _, err := staging.OpenRegular(linkName, os.O_RDONLY, 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, err
		}
		if f != nil {
			defer f.Close()
			old = f
		}
	}
	if old == nil {
		return res, nil
	}
	if na.f == nil {
		if err := r.openNewActive(ds, jr, na); err != nil {
			return res, err
		}
	}
	dedupeFrom := int64(-1)
	if !installedNow {
		dedupeFrom = jr.NewActiveSize
	}
	res, err = drainOld(ctx, old, jr.CatchUp, na.f, na.leased, dedupeFrom)
	if err != nil {
		return res, fmt.Errorf("drain %s into %s: %w", jr.OldActiveLink, jr.Path, err)
	}
	if err := na.f.Sync(); err != nil {
		return res, fmt.Errorf("sync %s: %w", jr.Path, err)
	}
	return res, nil
}

// openNewActive opens <path> for appending into na (creating it if the
// writer has not yet) and leases it, trying for a few milliseconds.
func (r *Set) openNewActive(ds *rotDirs, jr *rotJournal, na *rotNewActive) error {
	f, _, err := ds.dir.OpenRegular(ds.base, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	na.f = f
	for range 50 {
		if na.leased = fsx.TakeLease(f); na.leased {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if fi, err := f.Stat(); err == nil {
		if _, ino := fsx.InodeOf(fi); ino != jr.NewActiveIno {
			r.log.Warn("active file is not the one installed; draining into it anyway", "path", jr.Path)
		}
	}
	return nil
}

// cleanup removes the old files that are not part of the new set (only when
// they are still the journaled inodes; the highest index last, so the writer
// cannot rotate before all are gone), the staging directory and the journal.
func (r *Set) cleanup(ds *rotDirs, jr *rotJournal, point func(string) error) error {
	stagingName, err := entryIn(ds.dir.Path, jr.Staging)
	if err != nil {
		return err
	}
	removes := append([]rotRemove(nil), jr.Removes...)
	sort.SliceStable(removes, func(a, b int) bool { return rotIndex(removes[a].Path) < rotIndex(removes[b].Path) })
	for _, rm := range removes {
		name, err := entryIn(ds.dir.Path, rm.Path)
		if err != nil {
			return err
		}
		fi, err := ds.dir.Lstat(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if dev, ino := fsx.InodeOf(fi); dev != rm.Dev || ino != rm.Ino {
			r.log.Warn("old segment was replaced since the compaction; left in place", "path", rm.Path)
			continue
		}
		if err := ds.dir.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old segment: %w", err)
		}
		if err := point("remove:" + name); err != nil {
			return err
		}
	}
	if err := ds.dir.RemoveAll(stagingName); err != nil {
		return fmt.Errorf("remove staging directory: %w", err)
	}
	if err := ds.dir.Sync(); err != nil {
		return err
	}
	if err := point("cleanup-staging"); err != nil {
		return err
	}
	return ds.state.RemoveDurably(r.journalName(jr.Path))
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

// recoverLocked does Recover's work in the open directories ds; the caller
// holds the target's lock.
func (r *Set) recoverLocked(ctx context.Context, ds *rotDirs) error {
	path := ds.path
	jp := r.journalPath(path)
	var jr rotJournal
	found, err := ds.state.ReadJSON(r.journalName(path), &jr)
	if err != nil {
		return err
	}
	point := func(name string) error { return fsx.CrashPoint("recover:" + name) }
	if found {
		if jr.Path != path {
			return fmt.Errorf("journal %s is for %s, not %s: finish it with the old configuration or remove it by hand", jp, jr.Path, path)
		}
		switch jr.State {
		case rotStatePrepare:
			if err := r.rollBack(ds, &jr, point); err != nil {
				return err
			}
		case rotStateCommit:
			r.log.Info("completing an interrupted compaction", "path", path)
			if _, err := r.rollForward(ctx, ds, &jr, nil, nil, point); err != nil {
				return fmt.Errorf("journal %s: %w", jp, err)
			}
		case rotStateDrained:
			if err := r.cleanup(ds, &jr, point); err != nil {
				return fmt.Errorf("journal %s: %w", jp, err)
			}
		case rotStateInPlace:
			r.log.Info("completing an interrupted in-place compaction", "path", path)
			if _, err := r.finishInPlace(ctx, ds, &jr, nil, point); err != nil {
				return fmt.Errorf("journal %s: %w", jp, err)
			}
		default:
			return fmt.Errorf("journal %s: unknown state %q", jp, jr.State)
		}
	}
	if err := removeStagingLeftovers(ds.dir, ds.base); err != nil {
		return err
	}
	if err := ds.dir.RemoveTemps(ds.base); err != nil {
		return err
	}
	return ds.state.RemoveTemps(r.journalName(path))
}

// rollBack undoes a compaction that did not reach its commit point (jr in
// state "prepare"): its staging directory and its empty placeholder are
// removed, then the journal.
func (r *Set) rollBack(ds *rotDirs, jr *rotJournal, point func(string) error) error {
	jp := r.journalPath(ds.path)
	if jr.Staging != "" {
		name, err := entryIn(ds.dir.Path, jr.Staging)
		if err != nil {
			return fmt.Errorf("journal %s: %w", jp, err)
		}
		if err := ds.dir.RemoveAll(name); err != nil {
			return fmt.Errorf("remove staging directory: %w", err)
		}
	}
	if jr.Placeholder != "" {
		name, err := entryIn(ds.dir.Path, jr.Placeholder)
		if err != nil {
			return fmt.Errorf("journal %s: %w", jp, err)
		}
		if err := removeIfEmpty(ds.dir, name); err != nil {
			return err
		}
	}
	if err := point("rollback"); err != nil {
		return err
	}
	return ds.state.RemoveDurably(r.journalName(ds.path))
}

// removeStagingLeftovers removes from dir the staging directories of the
// set whose active file is base: once a journal is dealt with, none is
// referred to.
func removeStagingLeftovers(dir *fsx.Dir, base string) error {
	entries, err := dir.ReadDir()
	if err != nil {
		return err
	}
	prefix := rotStagingPrefix(base)
	removed := false
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		if err := dir.RemoveAll(e.Name()); err != nil {
			return fmt.Errorf("remove leftover staging directory: %w", err)
		}
		removed = true
	}
	if removed {
		return dir.Sync()
	}
	return nil
}
