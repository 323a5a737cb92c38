// Package backendtest holds tests that every journaled file backend
// (backends/jsonfile, backends/rotating) must pass, written once: faults in
// the state directory. Each backend's own test supplies a fresh target and
// the path of its journal; nothing of the journal's format is shared.
package backendtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// FaultTarget is a backend over a fresh target, for the fault tests.
type FaultTarget struct {
	Backend backends.Backend
	// Path is the target's file (a rotating set's active file).
	Path string
	// Journal is the path of the backend's journal for the target in the
	// state directory.
	Journal string
	// Interrupted, when not nil, creates what an interrupted compaction
	// leaves beside the target besides its journal (json: the old file's
	// link) and returns the paths; under a corrupt journal they must stay.
	Interrupted func(t *testing.T) []string
}

// NewFaultTarget returns a backend over a fresh target in the existing
// directory data, with its state directory at state (which may not exist).
type NewFaultTarget func(t *testing.T, data, state string) FaultTarget

// newTarget calls newFT with fresh directories.
func newTarget(t *testing.T, newFT NewFaultTarget) (FaultTarget, string) {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	return newFT(t, data, state), state
}

// compactOne is a compaction that would change the target.
func compactOne(b backends.Backend) error {
	_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(1)}, Now: time.Unix(1795600000, 0)})
	return err
}

// JournalTempLeftover: a kill while the journal is being written
// (fsx.Dir.WriteJSON: temp file, fsync, rename) leaves the journal's
// temporary file in the state directory. Recover, which runs at start and
// before every compaction, must remove it, as it removes the temporary
// files beside the target, and nothing else.
func JournalTempLeftover(t *testing.T, newFT NewFaultTarget) {
	ft, _ := newTarget(t, newFT)
	dir := filepath.Dir(ft.Journal)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, fsx.TempPrefix(filepath.Base(ft.Journal))+"0123456789abcdef")
	if err := os.WriteFile(leftover, []byte(`{"version": 1, "tar`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Someone else's file in the state directory stays.
	other := filepath.Join(dir, "operator-notes.txt")
	if err := os.WriteFile(other, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(ft.Path)
	if err := ft.Backend.Recover(context.Background()); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if _, err := os.Stat(leftover); err == nil {
		// Found by integration TestCrashLiveWriter/json; fixed in e424f8d.
		t.Fatalf("the journal's temporary file %s survives Recover", filepath.Base(leftover))
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Recover removed a file that is not its own: %v", err)
	}
	if after, _ := os.ReadFile(ft.Path); !bytes.Equal(before, after) {
		t.Errorf("Recover changed the target")
	}
}

// CorruptJournal: a journal that cannot be decoded (truncated, garbage,
// wrong type) makes Recover and Compact fail with an error naming the
// journal, and changes nothing: the target, the journal and what
// FaultTarget.Interrupted made stay as they are, so an operator can decide.
func CorruptJournal(t *testing.T, newFT NewFaultTarget) {
	for _, garbage := range []string{`{"version": 1, "target": "ev`, "\x00\x01\x02garbage", `[1,2,3]`, `{"version": "one"}`} {
		ft, _ := newTarget(t, newFT)
		if err := os.MkdirAll(filepath.Dir(ft.Journal), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ft.Journal, []byte(garbage), 0o600); err != nil {
			t.Fatal(err)
		}
		var kept []string
		if ft.Interrupted != nil {
			kept = ft.Interrupted(t)
		}
		before, _ := os.ReadFile(ft.Path)
		err := ft.Backend.Recover(context.Background())
		if err == nil {
			t.Errorf("journal %q: Recover accepted a corrupt journal", garbage)
			continue
		}
		if !strings.Contains(err.Error(), ft.Journal) {
			t.Errorf("Recover's error does not name the journal %s: %v", ft.Journal, err)
		}
		if err := compactOne(ft.Backend); err == nil {
			t.Errorf("journal %q: Compact ran over a corrupt journal", garbage)
		}
		if after, _ := os.ReadFile(ft.Path); !bytes.Equal(before, after) {
			t.Errorf("journal %q: the target changed", garbage)
		}
		if data, _ := os.ReadFile(ft.Journal); string(data) != garbage {
			t.Errorf("the corrupt journal was changed or removed: an operator must see it")
		}
		for _, p := range kept {
			if _, err := os.Lstat(p); err != nil {
				t.Errorf("%s was removed under a corrupt journal: %v", filepath.Base(p), err)
			}
		}
	}
}

// StateDirNotADirectory: a state directory path that is a file makes
// Compact fail with an error naming it; the target is unchanged.
func StateDirNotADirectory(t *testing.T, newFT NewFaultTarget) {
	ft, state := newTarget(t, newFT)
	if err := os.WriteFile(state, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(ft.Path)
	if err := compactOne(ft.Backend); err == nil || !strings.Contains(err.Error(), state) {
		t.Errorf("Compact with a state directory that is a file: %v; want an error naming it", err)
	}
	if after, _ := os.ReadFile(ft.Path); !bytes.Equal(before, after) {
		t.Errorf("the target changed")
	}
}
