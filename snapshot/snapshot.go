// Package snapshot takes, keeps and releases consistent backup snapshots of
// file targets (json, rotating): hard links of every file of a target in a
// directory beside it, on the same filesystem, with the byte count of each
// file a backup reads. Nothing is copied and nothing is frozen: Papyra
// keeps writing and the watcher keeps compacting.
//
// # Why a snapshot stays still
//
// A snapshot links inodes, not names. The json compaction renames a new
// file over the target (a new inode), so the linked inode keeps its bytes;
// the rotating compaction installs new segments by rename and only appends
// to files it created, and every positional write into an existing file is
// refused when the file has more than one link (backends.ErrLinked). Papyra
// appends to the active file and rotates by rename; appends only add bytes
// past the recorded count. So the byte range [0, bytes) of each file of a
// snapshot never changes while the snapshot is held.
//
// # Taking one
//
// The target's compaction lock is held (Holder) and an interrupted
// compaction completed first, so no compaction runs meanwhile. Every file
// operation is relative to the target's directory as the backend holds it
// open, and to the snapshot directory as opened right after creating it
// (package fsx), never through a path: a parent directory renamed away and
// replaced meanwhile (by a link to somewhere else, say) redirects nothing.
// The files are listed (name and inode), linked one by one, and listed
// again: when
// the writer rotated in between (a name now holds another inode, or the
// set changed), the links are removed and it starts again. A held link
// keeps its inode number from being reused, so an unchanged list means no
// rotation happened. The byte count of each file is its size up to its last
// newline, measured after the check (records appended meanwhile are newer
// than everything in the older files, so the run stays contiguous).
//
// # State
//
// Each snapshot is recorded in <state_dir>/snapshots/<id>.json before its
// directory is created, so a restart keeps it, and a crash while taking it
// leaves a record whose directory Release and expiry remove. The record
// keeps the identity (device and inode) of the target's directory and of
// the snapshot directory: Release removes only files of that very
// directory, and refuses while the directory at the recorded path is
// another one (retried at the next expiry).
package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/papyra/watcher/backends/fsx"
)

// DefaultTTL is how long a snapshot is kept when nobody releases it.
const DefaultTTL = time.Hour

// MaxTTL bounds a requested TTL.
const MaxTTL = 7 * 24 * time.Hour

// dirMarker is in the name of every snapshot directory:
// .<base>.watcher-snap-<id>.
const dirMarker = ".watcher-snap-"

// ErrNotFound is returned by Release for an id no snapshot has.
var ErrNotFound = errors.New("no such snapshot")

// File is one file of a snapshot: read Bytes bytes of Path.
type File struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

// Snapshot is one target's snapshot, as NATS replies carry it. For a target
// that cannot be snapshotted (redis, memory) only Target and Skipped are
// set; for one that failed, Target and Error.
type Snapshot struct {
	Target    string     `json:"target"`
	ID        string     `json:"id,omitempty"`
	Dir       string     `json:"dir,omitempty"`
	Files     []File     `json:"files,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Skipped   string     `json:"skipped,omitempty"`
	Error     string     `json:"error,omitempty"`
}

// Holder is implemented by the file backends (jsonfile.File,
// rotating.Set): HoldFiles calls fn while no compaction of this watcher
// (or of another process using the same state directory) can change the
// target's files, after an interrupted compaction has been completed. dir
// is the target's directory, held open (the one its compactions work in;
// nil when it does not exist); list returns the names in dir of the
// target's files as they are at the time of the call, oldest first. The
// writer (Papyra) may still append to the newest and, for a rotating set,
// rotate it: the caller checks for that.
type Holder interface {
	HoldFiles(ctx context.Context, fn func(dir *fsx.Dir, list func() ([]string, error)) error) error
}

// kept is a snapshot as the manager keeps it: with the identity of the
// target's directory (Parent*) and of the snapshot directory (Dir*), so
// that Release removes nothing but what Take created.
type kept struct {
	Snapshot
	ParentDev uint64 `json:"parent_dev,omitempty"`
	ParentIno uint64 `json:"parent_ino,omitempty"`
	DirDev    uint64 `json:"dir_dev,omitempty"`
	DirIno    uint64 `json:"dir_ino,omitempty"`
}

// Usage is what the snapshots of one target hold.
type Usage struct {
	// Held counts the snapshots.
	Held int `json:"held"`
	// PinnedBytes is the size of the linked files that only snapshots
	// still link (the target no longer has them), each counted once
	// however many snapshots hold it: what releasing them would free.
	PinnedBytes int64 `json:"pinned_bytes"`
}

// NewID returns a fresh snapshot id: snap-<UTC time>-<random>.
func NewID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return "snap-" + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// ValidID reports whether id can be a snapshot id (it names files).
func ValidID(id string) bool {
	if id == "" || len(id) > 100 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Manager keeps the snapshots of one watcher. It is safe for concurrent
// use.
type Manager struct {
	dir string // <state_dir>/snapshots
	log *slog.Logger

	mu   sync.Mutex
	held map[string][]kept // by id
}

// Open returns the manager whose records are in stateDir/snapshots, with
// the snapshots a previous run left (expired ones are released by the next
// Expire).
func Open(stateDir string, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{dir: filepath.Join(stateDir, "snapshots"), log: log, held: map[string][]kept{}}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", m.dir, err)
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			if strings.HasPrefix(name, ".tmp-") {
				os.Remove(filepath.Join(m.dir, name))
			}
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		data, err := os.ReadFile(filepath.Join(m.dir, name))
		if err != nil {
			return nil, err
		}
		var snaps []kept
		if err := json.Unmarshal(data, &snaps); err != nil || !ValidID(id) {
			log.Warn("snapshot record unreadable; left in place", "path", filepath.Join(m.dir, name), "err", err)
			continue
		}
		m.held[id] = snaps
	}
	return m, nil
}

// write writes the record of id (or removes it when it holds no snapshot).
// m.mu is held.
func (m *Manager) write(id string) error {
	path := filepath.Join(m.dir, id+".json")
	snaps := m.held[id]
	if len(snaps) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.MarshalIndent(snaps, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(m.dir, ".tmp-"+id)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write snapshot record %s: %w", path, err)
	}
	if d, err := os.Open(m.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// put replaces (or adds) target's entry under id and writes the record.
func (m *Manager) put(id string, r kept) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	snaps := slices.DeleteFunc(m.held[id], func(x kept) bool { return x.Target == r.Target })
	r.Files = slices.Clone(r.Files)
	m.held[id] = append(snaps, r)
	return m.write(id)
}

// drop removes target's entry under id and writes the record.
func (m *Manager) drop(id, target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.held[id] = slices.DeleteFunc(m.held[id], func(x kept) bool { return x.Target == target })
	if len(m.held[id]) == 0 {
		delete(m.held, id)
	}
	return m.write(id)
}

// Take snapshots target (whose files h holds) under id, kept until
// Release(id) or ttl has passed. path is the target's configured path: the
// snapshot directory, .<base of path>.watcher-snap-<id>, goes beside the
// target's files, in the directory h holds.
func (m *Manager) Take(ctx context.Context, id, target, path string, h Holder, ttl time.Duration) (Snapshot, error) {
	if !ValidID(id) {
		return Snapshot{Target: target}, fmt.Errorf("invalid snapshot id %q", id)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if ttl > MaxTTL {
		ttl = MaxTTL
	}
	exp := time.Now().Add(ttl).UTC().Truncate(time.Second)
	r := kept{Snapshot: Snapshot{Target: target, ID: id, ExpiresAt: &exp}}
	name := "." + filepath.Base(path) + dirMarker + id
	err := h.HoldFiles(ctx, func(dir *fsx.Dir, list func() ([]string, error)) error {
		made, err := m.take(ctx, &r, dir, name, list)
		if err == nil || errors.Is(err, fsx.ErrSimulatedCrash) {
			return err // a simulated crash cleans nothing up
		}
		if made {
			// Still holding the directory: remove what was made.
			if rerr := removeIn(dir, r); rerr != nil {
				m.log.Warn("failed backup snapshot not removed; removed at its expiry", "dir", r.Dir, "err", rerr)
				return err
			}
		}
		m.drop(id, target)
		return err
	})
	if err != nil {
		return Snapshot{Target: target, Error: err.Error()}, err
	}
	m.log.Info("backup snapshot taken", "target", target, "id", id, "dir", r.Dir, "files", len(r.Files), "expires_at", exp)
	return r.Snapshot, nil
}

// take makes the snapshot r in dir, in its subdirectory name (no directory
// and no file when dir is nil: the target's directory does not exist). It
// records r before the snapshot directory exists, again with the
// directory's identity once it does, and at the end with the files: a
// crash leaves nothing untracked. made says the directory was created.
func (m *Manager) take(ctx context.Context, r *kept, dir *fsx.Dir, name string, list func() ([]string, error)) (made bool, err error) {
	if dir == nil {
		return false, m.put(r.ID, *r)
	}
	fi, err := dir.Info()
	if err != nil {
		return false, err
	}
	r.ParentDev, r.ParentIno = fsx.InodeOf(fi)
	r.Dir = dir.PathOf(name)
	if err := m.put(r.ID, *r); err != nil {
		return false, err
	}
	if err := fsx.CrashPoint("snapshot-recorded"); err != nil {
		return false, err
	}
	if err := dir.Mkdir(name, 0o750); err != nil {
		return false, fmt.Errorf("create snapshot directory: %w", err)
	}
	sub, err := dir.OpenSubdir(name)
	if err != nil {
		return true, err
	}
	defer sub.Close()
	sfi, err := sub.Info()
	if err != nil {
		return true, err
	}
	r.DirDev, r.DirIno = fsx.InodeOf(sfi)
	if err := m.put(r.ID, *r); err != nil {
		return true, err
	}
	if err := fsx.CrashPoint("snapshot-dir-created"); err != nil {
		return true, err
	}
	files, err := linkStill(ctx, dir, sub, list)
	if err != nil {
		return true, err
	}
	r.Files = files
	if err := m.put(r.ID, *r); err != nil {
		return true, err
	}
	return true, fsx.CrashPoint("snapshot-taken")
}

type entry struct {
	name     string
	dev, ino uint64
}

// listInodes lists the target's files (names in dir) with their inodes.
func listInodes(dir *fsx.Dir, list func() ([]string, error)) ([]entry, error) {
	names, err := list()
	if err != nil {
		return nil, err
	}
	out := make([]entry, 0, len(names))
	for _, n := range names {
		fi, err := dir.Lstat(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := fsx.RequireRegular(dir.PathOf(n), fi); err != nil {
			return nil, err
		}
		d, i := fsx.InodeOf(fi)
		out = append(out, entry{n, d, i})
	}
	return out, nil
}

// stillAttempts bounds how often linkStill starts again after a rotation.
const stillAttempts = 20

// linkStill links every listed file of dir into sub, retrying while the
// writer rotates, and returns the files oldest first with their byte
// counts.
func linkStill(ctx context.Context, dir, sub *fsx.Dir, list func() ([]string, error)) ([]File, error) {
	for range stillAttempts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		before, err := listInodes(dir, list)
		if err != nil {
			return nil, err
		}
		ok := true
		var links []string
		for _, e := range before {
			if err := dir.LinkTo(e.name, sub, e.name); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					ok = false // rotated away meanwhile
					break
				}
				return nil, err
			}
			links = append(links, e.name)
			if err := fsx.CrashPoint("snapshot-linked:" + e.name); err != nil {
				return nil, err
			}
			fi, err := sub.Lstat(e.name)
			if err != nil {
				return nil, err
			}
			if d, i := fsx.InodeOf(fi); d != e.dev || i != e.ino {
				ok = false
				break
			}
		}
		if ok {
			after, err := listInodes(dir, list)
			if err != nil {
				return nil, err
			}
			ok = slices.Equal(before, after)
		}
		if !ok {
			for _, l := range links {
				sub.Remove(l)
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		files := make([]File, 0, len(links))
		for _, l := range links {
			n, err := completeBytes(sub, l)
			if err != nil {
				return nil, err
			}
			files = append(files, File{Path: sub.PathOf(l), Bytes: n})
		}
		if err := sub.Sync(); err != nil {
			return nil, err
		}
		return files, nil
	}
	return nil, errors.New("the writer kept rotating while the snapshot was taken; try again")
}

// completeBytes returns the length of the file name of dir up to and
// including its last newline (0 when it has none).
func completeBytes(dir *fsx.Dir, name string) (int64, error) {
	f, fi, err := dir.OpenRegular(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	end := fi.Size()
	buf := make([]byte, 64<<10)
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil && err != io.EOF {
			return 0, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return end - n + int64(i) + 1, nil
		}
		end -= n
	}
	return 0, nil
}

// Release removes every snapshot with id and returns the targets it held.
// ErrNotFound when there is none.
func (m *Manager) Release(id string) ([]string, error) {
	m.mu.Lock()
	// A copy: drop edits m.held[id] in place (slices.DeleteFunc shifts
	// and zeroes its elements) while the loop below reads it.
	held, ok := m.held[id]
	snaps := slices.Clone(held)
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	var targets []string
	var errs []error
	for _, s := range snaps {
		if err := removeDir(s); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.drop(id, s.Target); err != nil {
			errs = append(errs, err)
			continue
		}
		targets = append(targets, s.Target)
	}
	if len(errs) == 0 {
		m.log.Info("backup snapshot released", "id", id, "targets", targets)
	}
	return targets, errors.Join(errs...)
}

// removeDir removes the directory of the snapshot r, relative to its
// parent opened once: nothing when the parent or the directory is gone, an
// error when the directory at the recorded path is not the one Take made.
func removeDir(r kept) error {
	if r.Dir == "" {
		return nil
	}
	parentPath, name := filepath.Split(r.Dir)
	if !strings.HasSuffix(name, dirMarker+r.ID) {
		return fmt.Errorf("refusing to remove %s: not a snapshot directory", r.Dir)
	}
	// The target's directory may be reached through a link where its
	// target follows links; the identity check below is what matters.
	parent, err := fsx.OpenDir(filepath.Clean(parentPath), true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release snapshot %s: %w", r.ID, err)
	}
	defer parent.Close()
	if r.ParentIno != 0 {
		fi, err := parent.Info()
		if err != nil {
			return err
		}
		if d, i := fsx.InodeOf(fi); d != r.ParentDev || i != r.ParentIno {
			return fmt.Errorf("refusing to remove %s: %s is no longer the directory the snapshot was taken in", r.Dir, parent.Path)
		}
	}
	return removeIn(parent, r)
}

// removeIn removes the snapshot directory of r from parent, the directory
// it was made in: only when it is the directory Take made (when recorded),
// and holds only files.
func removeIn(parent *fsx.Dir, r kept) error {
	name := filepath.Base(r.Dir)
	sub, err := parent.OpenSubdir(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release snapshot %s: %w", r.ID, err)
	}
	defer sub.Close()
	if r.DirIno != 0 {
		fi, err := sub.Info()
		if err != nil {
			return err
		}
		if d, i := fsx.InodeOf(fi); d != r.DirDev || i != r.DirIno {
			return fmt.Errorf("refusing to remove %s: not the directory the snapshot made", r.Dir)
		}
	}
	ents, err := sub.ReadDir()
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			return fmt.Errorf("refusing to remove %s: it holds a directory %s", r.Dir, e.Name())
		}
		if err := sub.Remove(e.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := parent.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return parent.Sync()
}

// Expire releases the snapshots whose expiry is before now and returns
// their ids.
func (m *Manager) Expire(now time.Time) []string {
	m.mu.Lock()
	var due []string
	for id, snaps := range m.held {
		for _, s := range snaps {
			if s.ExpiresAt == nil || s.ExpiresAt.Before(now) {
				due = append(due, id)
				break
			}
		}
	}
	m.mu.Unlock()
	sort.Strings(due)
	for _, id := range due {
		if _, err := m.Release(id); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Warn("expired backup snapshot not removed", "id", id, "err", err)
			continue
		}
		m.log.Info("backup snapshot expired (no post-backup came in time)", "id", id)
	}
	return due
}

// Run expires snapshots every interval until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	m.Expire(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.Expire(now)
		}
	}
}

// List returns every held snapshot, by id then target.
func (m *Manager) List() []Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Snapshot
	for _, snaps := range m.held {
		for _, r := range snaps {
			s := r.Snapshot
			s.Files = slices.Clone(s.Files)
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Target < out[j].Target
	})
	return out
}

// Usage returns, per target, the snapshots held and the bytes they pin: a
// file is pinned when every link it has left is a snapshot's (the target
// no longer links it), and counts once however many snapshots hold it.
func (m *Manager) Usage() map[string]Usage {
	type inode struct {
		target string
		links  int    // snapshot links to it
		nlink  uint64 // its link count
		size   int64
	}
	out := map[string]Usage{}
	inodes := map[[2]uint64]*inode{}
	var order [][2]uint64
	for _, s := range m.List() {
		u := out[s.Target]
		u.Held++
		out[s.Target] = u
		for _, f := range s.Files {
			fi, err := os.Lstat(f.Path)
			if err != nil {
				continue
			}
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				continue
			}
			key := [2]uint64{uint64(st.Dev), st.Ino}
			in := inodes[key]
			if in == nil {
				in = &inode{target: s.Target}
				inodes[key] = in
				order = append(order, key)
			}
			in.links++
			in.nlink, in.size = uint64(st.Nlink), fi.Size()
		}
	}
	for _, key := range order {
		if in := inodes[key]; in.nlink <= uint64(in.links) {
			u := out[in.target]
			u.PinnedBytes += in.size
			out[in.target] = u
		}
	}
	return out
}
