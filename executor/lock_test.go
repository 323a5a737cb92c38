package executor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/papyra/watcher/backends"
)

// dirNames lists the names in dir, for messages and comparisons.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestLockStateDirSwapped: the state directory is renamed away and a
// symbolic link to another directory put in its place once the executor has
// opened it: the locks directory and the lock file are still created in the
// state directory (where it went), nothing in the other one, and the
// compaction runs under the lock.
func TestLockStateDirSwapped(t *testing.T) {
	base := t.TempDir()
	state, away, victim := filepath.Join(base, "state"), filepath.Join(base, "state-away"), filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	swapped := false
	lockHook = func() {
		if swapped {
			return
		}
		swapped = true
		if err := os.Rename(state, away); err != nil {
			t.Error(err)
		}
		if err := os.Symlink("victim", state); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { lockHook = nil })
	b := &fakeBackend{}
	ex := newEx(t, state, b)
	if r := ex.Run(context.Background(), Job{Target: "t"}); r.Error != "" {
		t.Fatalf("run: %s", r.Error)
	}
	if !swapped || b.compacts.Load() != 1 {
		t.Fatalf("swapped %v, compactions %d", swapped, b.compacts.Load())
	}
	if names := dirNames(t, victim); len(names) != 0 {
		t.Fatalf("created in the directory the link points to: %v", names)
	}
	if _, err := os.Lstat(filepath.Join(away, "locks", "t.lock")); err != nil {
		t.Fatalf("the lock file is not in the state directory: %v", err)
	}
	fi, err := os.Stat(away)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, want 0700", fi.Mode().Perm())
	}
}

// TestLockRefusesLinks: a symbolic link at the locks directory's name, or at
// the lock file's, is refused with ErrSymlink naming it; nothing is created
// where it points, and the compaction does not run.
func TestLockRefusesLinks(t *testing.T) {
	for _, tc := range []struct{ name, link, target string }{
		{"locks-dir", "locks", "../victim"},
		{"lock-file", "locks/t.lock", "../../victim/t.lock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			state, victim := filepath.Join(base, "state"), filepath.Join(base, "victim")
			if err := os.Mkdir(victim, 0o755); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(state, tc.link)
			if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, link); err != nil {
				t.Fatal(err)
			}
			b := &fakeBackend{}
			ex := newEx(t, state, b)
			r := ex.Run(context.Background(), Job{Target: "t"})
			if !strings.Contains(r.Error, backends.ErrSymlink.Error()) || !strings.Contains(r.Error, link) {
				t.Fatalf("run: error %q, want ErrSymlink naming %s", r.Error, link)
			}
			err := ex.Recover(context.Background())
			if !errors.Is(err, backends.ErrSymlink) {
				t.Fatalf("recover: %v, want ErrSymlink", err)
			}
			if b.compacts.Load() != 0 || b.recovers.Load() != 0 {
				t.Fatalf("ran without the lock: %d compactions, %d recoveries", b.compacts.Load(), b.recovers.Load())
			}
			if names := dirNames(t, victim); len(names) != 0 {
				t.Fatalf("created where the link points: %v", names)
			}
		})
	}
}
