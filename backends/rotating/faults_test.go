package rotating

// Faults in the state directory: what a kill in the middle of a journal
// write leaves, a journal that is corrupt, and a state directory that is
// not a directory. The tests are backendtest's, shared with
// backends/jsonfile; this file supplies a rotating set and its journal.

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/papyra/watcher/backends/internal/backendtest"
)

// faultTarget is a rotating set whose active file holds testdata/papyra's
// count.ndjson.
func faultTarget(t *testing.T, data, state string) backendtest.FaultTarget {
	t.Helper()
	in, err := os.ReadFile("testdata/papyra/count.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(data, "rot.ndjson")
	if err := os.WriteFile(path, in, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Name: "rot", Path: path, MaxBytes: 1 << 20, MaxFiles: 3, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	return backendtest.FaultTarget{Backend: r, Path: path, Journal: r.journalPath(path)}
}

func TestFaultsJournalTempLeftover(t *testing.T) { backendtest.JournalTempLeftover(t, faultTarget) }

func TestFaultsCorruptJournal(t *testing.T) { backendtest.CorruptJournal(t, faultTarget) }

func TestFaultsStateDirNotADirectory(t *testing.T) { backendtest.StateDirNotADirectory(t, faultTarget) }
