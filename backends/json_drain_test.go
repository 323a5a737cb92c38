package backends

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
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
	crashHook = func(p string) error {
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
	}
	defer func() { crashHook = nil }()
	rep, err := j.Compact(context.Background(), CompactOptions{Retention: Retention{MaxRecords: ptrInt(10)}, Now: time.Unix(1795600000, 0)})
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
