package snapshot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/jsonfile"
	"github.com/papyra/watcher/backends/rotating"
)

// The file backends hold their files for snapshots.
var (
	_ Holder = (*jsonfile.File)(nil)
	_ Holder = (*rotating.Set)(nil)
)

// writeRecords writes n records from seq first to path.
func writeRecords(t *testing.T, path string, first, n int64) {
	t.Helper()
	var b strings.Builder
	for i := range n {
		b.WriteString(record(first + i))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rotatingSet makes a rotating set audit.log, .1, .2 in dir and its backend.
func rotatingSet(t *testing.T, dir, state string) (*rotating.Set, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.log")
	writeRecords(t, path+".2", 1, 10)
	writeRecords(t, path+".1", 11, 10)
	writeRecords(t, path, 21, 5)
	b, err := rotating.New(rotating.Config{Name: "audit", Path: path, MaxBytes: 1 << 20, MaxFiles: 5, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	return b, path
}

// leftovers lists the snapshot directories in dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), dirMarker) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestUsagePinsEachFileOnce: a file only snapshots still link pins its
// bytes once, however many snapshots hold it; a file the target still
// links pins nothing.
func TestUsagePinsEachFileOnce(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	path := filepath.Join(dir, "events.ndjson")
	writeRecords(t, path, 1, 100)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	b, err := jsonfile.New(jsonfile.Config{Name: "events", Path: path, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(state, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := m.Take(context.Background(), NewID(time.Now()), "events", path, b, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if u := m.Usage()["events"]; u.Held != 2 || u.PinnedBytes != 0 {
		t.Fatalf("usage while the target links the file: %+v, want 2 held and nothing pinned", u)
	}
	// The target's file replaced (as a compaction does, by rename): the
	// old file is held by the two snapshots only.
	tmp := path + ".new"
	writeRecords(t, tmp, 101, 3)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if u := m.Usage()["events"]; u.Held != 2 || u.PinnedBytes != size {
		t.Fatalf("usage once the target no longer links the file: %+v, want 2 held pinning %d bytes", u, size)
	}
	// Another link (a backup tool's, say) keeps it from being pinned.
	if err := os.Link(m.List()[0].Files[0].Path, filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	if u := m.Usage()["events"]; u.PinnedBytes != 0 {
		t.Fatalf("usage with a link outside the snapshots: %+v, want nothing pinned", u)
	}
}

// TestSnapshotRestartThenExpiry: a snapshot reloaded by a restart (Open)
// expires at its expires_at: directory and record removed.
func TestSnapshotRestartThenExpiry(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	b, path := rotatingSet(t, filepath.Join(dir, "data"), state)
	m, err := Open(state, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Take(context.Background(), NewID(time.Now()), "audit", path, b, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Files) != 3 {
		t.Fatalf("snapshot files %+v, want the three of the set", s.Files)
	}

	m2, err := Open(state, nil) // the restart
	if err != nil {
		t.Fatal(err)
	}
	if l := m2.List(); len(l) != 1 || l[0].ID != s.ID || l[0].ExpiresAt == nil || !l[0].ExpiresAt.Equal(*s.ExpiresAt) {
		t.Fatalf("reloaded %+v, want %+v", l, s)
	}
	if ids := m2.Expire(s.ExpiresAt.Add(-time.Second)); len(ids) != 0 {
		t.Fatalf("expired before expires_at: %v", ids)
	}
	if ids := m2.Expire(s.ExpiresAt.Add(time.Second)); !slices.Equal(ids, []string{s.ID}) {
		t.Fatalf("expired %v, want %s", ids, s.ID)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot directory left after expiry: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "snapshots", s.ID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record left after expiry: %v", err)
	}
	if m3, err := Open(state, nil); err != nil || len(m3.List()) != 0 {
		t.Fatalf("after another restart: %+v, %v", m3.List(), err)
	}
}

// takePoints are the crash points of one Take of the test set.
func takePoints(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	b, path := rotatingSet(t, filepath.Join(dir, "data"), state)
	m, err := Open(state, nil)
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	restore := fsx.SetCrashHook(func(p string) error { points = append(points, p); return nil })
	_, err = m.Take(context.Background(), NewID(time.Now()), "audit", path, b, time.Hour)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"snapshot-recorded", "snapshot-dir-created", "snapshot-linked:audit.log.2", "snapshot-linked:audit.log", "snapshot-taken"} {
		if !slices.Contains(points, want) {
			t.Fatalf("no crash point %s in %v", want, points)
		}
	}
	return points
}

// TestSnapshotCrashDuringTake: a watcher killed at any point of a Take
// leaves a record that the next run reloads; its expiry (or a
// post-backup) removes the partial snapshot directory and the record, and
// the target's files are untouched.
func TestSnapshotCrashDuringTake(t *testing.T) {
	for _, point := range takePoints(t) {
		for _, how := range []string{"expire", "release"} {
			t.Run(point+"/"+how, func(t *testing.T) {
				dir := t.TempDir()
				state := filepath.Join(dir, "state")
				data := filepath.Join(dir, "data")
				b, path := rotatingSet(t, data, state)
				before := setContent(t, data)
				m, err := Open(state, nil)
				if err != nil {
					t.Fatal(err)
				}
				id := NewID(time.Now())
				restore := fsx.SetCrashHook(func(p string) error {
					if p == point {
						return errors.New("killed")
					}
					return nil
				})
				_, err = m.Take(context.Background(), id, "audit", path, b, time.Minute)
				restore()
				if !errors.Is(err, fsx.ErrSimulatedCrash) {
					t.Fatalf("Take = %v, want the simulated crash", err)
				}

				m2, err := Open(state, nil) // the next run
				if err != nil {
					t.Fatal(err)
				}
				l := m2.List()
				if len(l) != 1 || l[0].ID != id || l[0].ExpiresAt == nil {
					t.Fatalf("after the crash, the next run holds %+v; want the record of %s", l, id)
				}
				if how == "expire" {
					if ids := m2.Expire(l[0].ExpiresAt.Add(time.Second)); !slices.Equal(ids, []string{id}) {
						t.Fatalf("expired %v, want %s", ids, id)
					}
				} else if _, err := m2.Release(id); err != nil {
					t.Fatal(err)
				}
				if left := leftovers(t, data); len(left) != 0 {
					t.Fatalf("snapshot directories left: %v", left)
				}
				if l := m2.List(); len(l) != 0 {
					t.Fatalf("still held: %+v", l)
				}
				if ents, _ := os.ReadDir(filepath.Join(state, "snapshots")); len(ents) != 0 {
					t.Fatalf("records left: %v", ents)
				}
				if after := setContent(t, data); !maps.Equal(before, after) {
					t.Fatalf("the set changed:\n%v\n%v", before, after)
				}
			})
		}
	}
}

// setContent maps the name of each file of dir (not the snapshot
// directories) to its content.
func setContent(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// dirState describes every entry of dir (recursively): name, inode, size,
// modification time. Equal states mean nothing was created, linked,
// renamed, removed or written there.
func dirState(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		out = append(out, fmt.Sprintf("%s ino=%d nlink=%d size=%d mtime=%d", strings.TrimPrefix(p, dir), st.Ino, st.Nlink, fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSnapshotParentSwapAtEveryPoint: at every point of a Take the target's
// directory is renamed away and its name made a link to another directory
// holding a set of the same names. The snapshot must be made of the
// target's own files, in its own directory; nothing may be created, linked
// or removed in the other one. A Release while the directory is swapped
// refuses and touches nothing; once it is back, the Release removes the
// snapshot.
func TestSnapshotParentSwapAtEveryPoint(t *testing.T) {
	for _, point := range takePoints(t) {
		t.Run(point, func(t *testing.T) {
			base := t.TempDir()
			state := filepath.Join(base, "state")
			data, away, victim := filepath.Join(base, "data"), filepath.Join(base, "data.away"), filepath.Join(base, "victim")
			b, path := rotatingSet(t, data, state)
			want := setContent(t, data)
			if err := os.MkdirAll(victim, 0o755); err != nil {
				t.Fatal(err)
			}
			for name := range want {
				writeRecords(t, filepath.Join(victim, name), 9000, 2)
			}
			victimBefore := dirState(t, victim)
			swapped := false
			swap := func() {
				if err := os.Rename(data, away); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("victim", data); err != nil {
					t.Fatal(err)
				}
				swapped = true
			}
			unswap := func() {
				if !swapped {
					return
				}
				if err := os.Remove(data); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(away, data); err != nil {
					t.Fatal(err)
				}
				swapped = false
			}
			defer unswap()
			m, err := Open(state, nil)
			if err != nil {
				t.Fatal(err)
			}
			restore := fsx.SetCrashHook(func(p string) error {
				if p == point && !swapped {
					swap()
				}
				return nil
			})
			s, err := m.Take(context.Background(), NewID(time.Now()), "audit", path, b, time.Hour)
			restore()
			if err != nil {
				t.Fatalf("Take with the directory swapped at %s: %v", point, err)
			}
			if got := dirState(t, victim); !slices.Equal(got, victimBefore) {
				t.Fatalf("the other directory changed:\n%q\n%q", victimBefore, got)
			}

			// A release while it is swapped refuses.
			if _, err := m.Release(s.ID); err == nil {
				t.Fatal("Release with the directory swapped: no error")
			}
			if got := dirState(t, victim); !slices.Equal(got, victimBefore) {
				t.Fatalf("the other directory changed on Release:\n%q\n%q", victimBefore, got)
			}
			unswap()

			// The snapshot holds the target's own files, in its directory.
			if len(s.Files) != 3 {
				t.Fatalf("files %+v, want the three of the set", s.Files)
			}
			for _, f := range s.Files {
				got, err := os.ReadFile(f.Path)
				if err != nil {
					t.Fatal(err)
				}
				if name := filepath.Base(f.Path); string(got[:f.Bytes]) != want[name] || filepath.Dir(filepath.Dir(f.Path)) != data {
					t.Fatalf("snapshot file %s does not hold the set's %s", f.Path, name)
				}
			}
			if _, err := m.Release(s.ID); err != nil {
				t.Fatal(err)
			}
			if left := leftovers(t, data); len(left) != 0 {
				t.Fatalf("snapshot directories left: %v", left)
			}
			if got := setContent(t, data); !maps.Equal(got, want) {
				t.Fatal("the set changed")
			}
		})
	}
}
