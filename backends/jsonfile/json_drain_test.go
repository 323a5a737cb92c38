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
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// A writer that opened the file before the swap and writes well after the
// quiet window (a stalled Papyra process) still has its record drained into
// the new file: the drain waits while someone has the old file open for
// writing.
func TestJSONDrainWaitsForSlowWriter(t *testing.T) {
	dir := t.TempDir()
	j, path := newTestJSON(t, dir)
	var in bytes.Buffer
	for i := range 50 {
		in.WriteString(`{"kind": "event", "seq": ` + string(rune('0'+i%10)) + `, "timestamp": 1795599990.0}` + "\n")
	}
	if err := os.WriteFile(path, in.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	late := []byte(`{"kind": "event", "note": "late", "timestamp": 1795599999.0}` + "\n")
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	fsx.SetCrashHook(func(p string) error {
		if p == "renamed" {
			go func() {
				time.Sleep(5 * drainQuiet) // far past the quiet window
				_, err := w.Write(late)
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				wrote <- err
			}()
		}
		return nil
	})
	defer func() { fsx.SetCrashHook(nil) }()
	rep, err := j.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: ptrInt(10)}, Now: time.Unix(1795600000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.HasSuffix(got, late) {
		t.Fatalf("the late record was lost (report %+v):\n%s", rep, got)
	}
	if n := bytes.Count(got, []byte("\n")); n != 11 {
		t.Fatalf("%d lines, want 10 retained + 1 late", n)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*watcher*")); len(m) != 0 {
		t.Fatalf("leftovers: %v", m)
	}
}

func ptrInt(v int64) *int64 { return &v }

// TestJSONDrainLongLineInPieces: a record several blocks long reaches the
// old file during the drain. It is copied into its reserved slot a block at
// a time (never held in memory whole); a kill between two of those pieces
// leaves a slot that is partly written, and recovery rewrites it whole:
// afterwards the file holds the compacted records, then the long record,
// the short one after it and the line a writer appended to the new file,
// each once, in order, nothing torn.
func TestJSONDrainLongLineInPieces(t *testing.T) {
	const block = 4096
	setTunables(t, block, 65536)
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	want, _ := os.ReadFile("testdata/json/count/expected.ndjson")
	long := `{"kind": "event", "event_type": "long", "payload": "` + strings.Repeat("x", 5*block) + `", "timestamp": 1795600001.0}` + "\n"
	short := `{"kind": "event", "event_type": "after-long", "timestamp": 1795600001.5}` + "\n"
	later := `{"kind": "event", "event_type": "new-file", "timestamp": 1795600002.0}` + "\n"
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			dir := t.TempDir()
			b, path := newTestJSON(t, dir)
			if err := os.WriteFile(path, in, 0o644); err != nil {
				t.Fatal(err)
			}
			var writer sync.WaitGroup
			pieces := 0
			fsx.SetCrashHook(func(p string) error {
				switch p {
				case "renamed":
					f, err := os.OpenFile(oldLinkName(path, 0), os.O_WRONLY|os.O_APPEND, 0)
					if err != nil {
						return err
					}
					_, err = f.WriteString(long + short)
					f.Close()
					if err != nil {
						return err
					}
					// Another process: its open waits on the lease.
					writer.Go(func() {
						f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
						if err != nil {
							t.Errorf("writer: %v", err)
							return
						}
						f.WriteString(later)
						f.Close()
					})
				case "drain-slot-piece":
					pieces++
					if crash && pieces == 2 {
						return errTestCrash
					}
				}
				return nil
			})
			_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}})
			fsx.SetCrashHook(nil)
			writer.Wait()
			if crash != errors.Is(err, errTestCrash) || !crash && err != nil {
				t.Fatalf("Compact: %v", err)
			}
			if pieces < 2 {
				t.Fatalf("the long record went into its slot in %d pieces after the first, want several", pieces)
			}
			if crash {
				got, _ := os.ReadFile(path)
				if !bytes.Contains(got, []byte(long[:block])) || bytes.Contains(got, []byte(long)) {
					t.Fatalf("after the kill the slot is not partly written:\n%q", got)
				}
				for range 2 {
					if err := b.Recover(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if exp := string(want) + long + short + later; string(got) != exp {
				t.Fatalf("file after the drain%s:\n%q\nwant\n%q", map[bool]string{true: " and recovery"}[crash], got, exp)
			}
			assertNoLeftovers(t, dir)
		})
	}
}

// TestJSONDrainLastPassMeasuresAfterDeciding: a writer that opened the file
// before the swap appends its line and closes just before the drain checks
// whether anyone still has the old file open. The check finds nobody, so
// that pass is the last, and it must drain what the writer wrote: the pass
// measures the old file after deciding, not before. A line landing between
// a measurement and the check would otherwise be past the last drained
// offset, and lost with the old inode. The drain also lasts at least
// drainSettle after the rename, whatever it finds.
func TestJSONDrainLastPassMeasuresAfterDeciding(t *testing.T) {
	dir := t.TempDir()
	j, path := newTestJSON(t, dir)
	var in bytes.Buffer
	for i := range 20 {
		fmt.Fprintf(&in, `{"kind": "event", "seq": %d, "timestamp": 1795599990.0}`+"\n", i)
	}
	if err := os.WriteFile(path, in.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	late := []byte(`{"kind": "event", "note": "late", "timestamp": 1795599999.0}` + "\n")
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var (
		renamedAt, drainedAt time.Time
		passes               int
		writeErr             error
	)
	restore := fsx.SetCrashHook(func(p string) error {
		switch p {
		case "renamed":
			renamedAt = time.Now()
		case "drain-pass":
			passes++
			// Once the settle time is over, so that this pass can be the
			// last: the writer's line lands, and it lets go of the file.
			if passes > 1 && w != nil && time.Since(renamedAt) >= drainSettle {
				if _, writeErr = w.Write(late); writeErr == nil {
					writeErr = w.Close()
				}
				w = nil
			}
		case "drained":
			drainedAt = time.Now()
		}
		return nil
	})
	defer restore()
	rep, err := j.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: ptrInt(5)}, Now: time.Unix(1795600000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if writeErr != nil || w != nil {
		t.Fatalf("the writer did not write during the drain (err %v)", writeErr)
	}
	got, _ := os.ReadFile(path)
	if !bytes.HasSuffix(got, late) {
		t.Fatalf("the line written just before the last pass was lost (report %+v):\n%s", rep, got)
	}
	if n := bytes.Count(got, []byte("\n")); n != 6 {
		t.Fatalf("%d lines, want 5 retained + 1 late:\n%s", n, got)
	}
	if d := drainedAt.Sub(renamedAt); d < drainSettle {
		t.Errorf("the drain ended %v after the rename, before drainSettle (%v)", d, drainSettle)
	}
}
