package jsonfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

var errTestCrash = errors.New("test crash")

// crashPoints are the named points of a json compaction, in order.
var crashPoints = []string{"temp-created", "survivors-copied", "caught-up", "linked", "journaled",
	"renamed", "dir-synced", "drain-journaled", "drain-reserved", "drain-reservation-journaled", "drain-written", "drained", "unlinked"}

func countLines(content []byte) map[string]int {
	m := map[string]int{}
	for _, l := range strings.SplitAfter(string(content), "\n") {
		if l != "" {
			m[l]++
		}
	}
	return m
}

// TestJSONCrashRecovery interrupts a compaction at every named point (as a
// SIGKILL would: no clean-up), with a writer appending to the old inode
// before and after the rename and to the new file after it, then runs
// Recover: the file holds the old or the new content with every appended
// record exactly once, and no leftovers remain.
func TestJSONCrashRecovery(t *testing.T) {
	setTunables(t, 4096, 65536)
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	want, _ := os.ReadFile("testdata/json/count/expected.ndjson")
	rec := func(name string) string {
		return fmt.Sprintf("{\"kind\": \"event\", \"event_type\": %q, \"timestamp\": 1795600001.0}\n", name)
	}
	for _, point := range crashPoints {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			b, path := newTestJSON(t, dir)
			os.WriteFile(path, in, 0o644)
			var appended []string
			appendTo := func(p, line string) {
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatalf("writer: %v", err)
				}
				f.WriteString(line)
				f.Close()
				appended = append(appended, line)
			}
			// A writer opening the path after the rename is another
			// process in real life: its open waits on the new file's
			// lease until the drain is over, so it runs concurrently here.
			var writer sync.WaitGroup
			fsx.SetCrashHook(func(p string) error {
				switch p {
				case "caught-up":
					appendTo(path, rec("A-old-inode-before-rename"))
				case "renamed":
					appendTo(oldLinkName(path, 0), rec("B-old-inode-after-rename"))
					line := rec("C-new-file-after-rename")
					appended = append(appended, line)
					writer.Go(func() {
						f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
						if err != nil {
							t.Errorf("writer: %v", err)
							return
						}
						f.WriteString(line)
						f.Close()
					})
				}
				if p == point {
					return errTestCrash
				}
				return nil
			})
			_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}})
			fsx.SetCrashHook(nil)
			writer.Wait()
			if !errors.Is(err, errTestCrash) {
				t.Fatalf("Compact err = %v, want the simulated crash", err)
			}
			// Right after the crash: old or new content, never less.
			checkOldOrNew(t, path, in, want, appended, false)
			for range 2 { // Recover is idempotent
				if err := b.Recover(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			checkOldOrNew(t, path, in, want, appended, true)
			assertNoLeftovers(t, dir)
			if _, err := os.Stat(b.journalPath); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("journal left after Recover")
			}
			if a, err := b.Scan(context.Background()); err != nil || len(a) != 0 {
				t.Fatalf("scan after recovery: %v %v", a, err)
			}
			// And the next compaction works.
			if _, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkOldOrNew checks that path holds the old content or the compacted
// one, plus appended records. Before recovery, records appended to the old
// inode after the swap may still be only in the old link; after it, every
// appended record must be in the file exactly once.
func checkOldOrNew(t *testing.T, path string, old, compacted []byte, appended []string, recovered bool) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := countLines(got)
	for l := range lines {
		if isReservedSlot([]byte(l)) && !recovered {
			delete(lines, l) // a reserved drain slot, until recovery fills it
		}
	}
	if recovered {
		// Appended records keep the order they were written in.
		last := -1
		for _, a := range appended {
			i := bytes.Index(got, []byte(a))
			if i >= 0 && i < last {
				t.Fatalf("appended record out of order: %s\nfile:\n%s", a, got)
			}
			last = max(last, i)
		}
	}
	for _, a := range appended {
		if lines[a] > 1 {
			t.Fatalf("appended record duplicated: %s", a)
		}
		if lines[a] == 0 && (recovered || !inOldLink(path, a)) {
			t.Fatalf("appended record lost: %s\nfile:\n%s", a, got)
		}
		delete(lines, a)
	}
	isOld := bytes.HasPrefix(got, old)
	base := countLines(compacted)
	if isOld {
		base = countLines(old)
	}
	for l, n := range base {
		if lines[l] != n {
			t.Fatalf("old=%v: line %q %d times, want %d", isOld, l, lines[l], n)
		}
		delete(lines, l)
	}
	if len(lines) != 0 {
		t.Fatalf("unexpected lines: %v", lines)
	}
}

// inOldLink reports whether line is in the old link of path (drained by
// Recover).
func inOldLink(path, line string) bool {
	b, err := os.ReadFile(oldLinkName(path, 0))
	return err == nil && strings.Contains(string(b), line)
}

// TestJSONRecoverForeignOldLink: an old link that is not the target's inode
// and has no journal is left alone (it may be the only copy of data).
func TestJSONRecoverForeignOldLink(t *testing.T) {
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	os.WriteFile(path, []byte("{\"kind\": \"event\", \"timestamp\": 1}\n"), 0o644)
	os.WriteFile(oldLinkName(path, 0), []byte("precious\n"), 0o644)
	if err := b.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(oldLinkName(path, 0)); string(got) != "precious\n" {
		t.Fatal("a foreign old file was removed")
	}
	a, _ := b.Scan(context.Background())
	if len(a) != 1 || a[0].Type != backends.AnomalyLeftover || a[0].Path != oldLinkName(path, 0) {
		t.Fatalf("scan: %+v", a)
	}
}

// TestJSONBusy: a second compaction of the same target (another process
// sharing the state directory) is refused with ErrBusy.
func TestJSONBusy(t *testing.T) {
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	os.WriteFile(path, []byte("{}\n"), 0o644)
	state, err := fsx.OpenStateDir(filepath.Dir(b.lockPath))
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	lock, err := state.TryLock(filepath.Base(b.lockPath))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	if _, err := b.Compact(context.Background(), backends.CompactOptions{}); !errors.Is(err, backends.ErrBusy) {
		t.Fatalf("err = %v", err)
	}
	if err := b.Recover(context.Background()); !errors.Is(err, backends.ErrBusy) {
		t.Fatalf("err = %v", err)
	}
	_ = filepath.Join
}

// TestJSONCrashDuringRecovery: a compaction is killed inside its drain, a
// writer then appends to the new file directly, and the recovery that must
// put the undrained lines back before that one is killed too, at each of its
// own points, with writers still appending. A second recovery leaves every
// record exactly once, in the order written, and nothing behind.
func TestJSONCrashDuringRecovery(t *testing.T) {
	setTunables(t, 4096, 65536)
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	want, _ := os.ReadFile("testdata/json/count/expected.ndjson")
	rec := func(name string) string {
		return fmt.Sprintf("{\"kind\": \"event\", \"event_type\": %q, \"timestamp\": 1795600001.0}\n", name)
	}
	points := []string{"splice-copied", "linked", "journaled", "renamed", "dir-synced", "drain-journaled",
		"drain-reserved", "drain-reservation-journaled", "drain-written", "drained", "unlinked"}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			b, path := newTestJSON(t, dir)
			os.WriteFile(path, in, 0o644)
			var appended []string
			appendTo := func(p, name string) {
				t.Helper()
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatalf("writer: %v", err)
				}
				f.WriteString(rec(name))
				f.Close()
				appended = append(appended, rec(name))
			}
			fsx.SetCrashHook(func(p string) error {
				switch p {
				case "renamed":
					appendTo(oldLinkName(path, 0), "B1-old-inode-after-rename")
					appendTo(oldLinkName(path, 0), "B2-old-inode-after-rename")
				case "drain-journaled":
					return errTestCrash
				}
				return nil
			})
			_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}})
			if !errors.Is(err, errTestCrash) {
				t.Fatalf("Compact err = %v, want the simulated crash", err)
			}
			appendTo(path, "C-new-file-after-the-kill")

			reached := false
			fsx.SetCrashHook(func(p string) error {
				switch p {
				case "splice-copied":
					appendTo(path, "E-during-the-recovery-copy")
				case "renamed":
					appendTo(oldLinkName(path, 1), "D-old-inode-after-the-recovery-rename")
				}
				if p == point {
					reached = true
					return errTestCrash
				}
				return nil
			})
			err = b.Recover(context.Background())
			fsx.SetCrashHook(nil)
			if !reached {
				t.Fatalf("recovery never reached %s (err %v)", point, err)
			}
			if !errors.Is(err, errTestCrash) {
				t.Fatalf("Recover err = %v, want the simulated crash", err)
			}
			appendTo(path, "F-after-the-second-kill")
			for range 2 {
				if err := b.Recover(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			checkOldOrNew(t, path, in, want, appended, true)
			assertNoLeftovers(t, dir)
			if _, err := os.Stat(b.journalPath); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("journal left after Recover")
			}
			if got, _ := os.ReadFile(path); bytes.IndexByte(got, 0) >= 0 {
				t.Fatalf("NUL bytes left in the file:\n%q", got)
			}
		})
	}
}

// TestJSONCrashRecoveryWithoutLeases runs the drain as on a filesystem
// without leases (chunks appended, found again by content after a kill):
// every record exactly once.
func TestJSONCrashRecoveryWithoutLeases(t *testing.T) {
	setTunables(t, 4096, 65536)
	leasesUsable = false
	t.Cleanup(func() { leasesUsable = true })
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	want, _ := os.ReadFile("testdata/json/count/expected.ndjson")
	for _, point := range []string{"renamed", "drain-journaled", "drain-written", "drained"} {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			b, path := newTestJSON(t, dir)
			os.WriteFile(path, in, 0o644)
			line := "{\"kind\": \"event\", \"event_type\": \"B\", \"timestamp\": 1795600001.0}\n"
			fsx.SetCrashHook(func(p string) error {
				if p == "renamed" {
					f, _ := os.OpenFile(oldLinkName(path, 0), os.O_WRONLY|os.O_APPEND, 0)
					f.WriteString(line)
					f.Close()
				}
				if p == point {
					return errTestCrash
				}
				return nil
			})
			_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}})
			fsx.SetCrashHook(nil)
			if !errors.Is(err, errTestCrash) {
				t.Fatalf("Compact err = %v, want the simulated crash", err)
			}
			if err := b.Recover(context.Background()); err != nil {
				t.Fatal(err)
			}
			checkOldOrNew(t, path, in, want, []string{line}, true)
			assertNoLeftovers(t, dir)
		})
	}
}
