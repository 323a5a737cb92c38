package jsonfile

// Faults in the state directory: what a kill in the middle of a journal
// write leaves, a journal that is corrupt, and a state directory that is
// not a directory. The tests are backendtest's, shared with
// backends/rotating; this file supplies a json target and its journal.

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/papyra/watcher/backends/internal/backendtest"
)

// faultTarget is a json target holding the input of the count golden case.
func faultTarget(t *testing.T, data, state string) backendtest.FaultTarget {
	t.Helper()
	in, err := os.ReadFile("testdata/json/count/input.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(data, "events.ndjson")
	if err := os.WriteFile(path, in, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := New(Config{Name: "events", Path: path, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	interrupted := func(t *testing.T) []string { // the old file's link
		link := oldLinkName(path, 0)
		if err := os.Link(path, link); err != nil {
			t.Fatal(err)
		}
		return []string{link}
	}
	return backendtest.FaultTarget{Backend: j, Path: path, Journal: j.journalPath, Interrupted: interrupted}
}

func TestFaultsJournalTempLeftover(t *testing.T) { backendtest.JournalTempLeftover(t, faultTarget) }

func TestFaultsCorruptJournal(t *testing.T) { backendtest.CorruptJournal(t, faultTarget) }

func TestFaultsStateDirNotADirectory(t *testing.T) { backendtest.StateDirNotADirectory(t, faultTarget) }
