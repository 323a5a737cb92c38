package jsonfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// TestJSONDrainRefusesLinkedFile: the drain writes what a writer appended
// to the old inode after the swap into a slot reserved in the new file, at
// an offset. When the new file has gained a second link meanwhile (a backup
// snapshot's), neither the drain nor a recovery writes into it
// (ErrLinked): the linked bytes stay as they are. Once the link is gone,
// recovery completes the drain: every record once.
func TestJSONDrainRefusesLinkedFile(t *testing.T) {
	setTunables(t, 4096, 65536)
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	if err := os.WriteFile(path, in, 0o644); err != nil {
		t.Fatal(err)
	}
	late := fmt.Sprintf("{\"kind\": \"event\", \"event_type\": %q, \"timestamp\": 1795600001.0}\n", "late-old-inode")
	link := filepath.Join(dir, "snapshot-link")
	reached := false
	fsx.SetCrashHook(func(p string) error {
		switch p {
		case "renamed":
			f, err := os.OpenFile(oldLinkName(path, 0), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			f.WriteString(late)
			f.Close()
		case "drain-reservation-journaled":
			// The slot is reserved; a snapshot links the new file now.
			// (Not opened here: the compaction holds a lease on it.)
			reached = true
			if err := os.Link(path, link); err != nil {
				return err
			}
		}
		return nil
	})
	_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}})
	fsx.SetCrashHook(nil)
	if !reached {
		t.Fatalf("the drain never reserved a slot (err %v)", err)
	}
	if !errors.Is(err, backends.ErrLinked) {
		t.Fatalf("Compact = %v, want ErrLinked", err)
	}
	linked, err := os.ReadFile(link)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(linked, []byte(late)) || !bytes.Contains(linked, []byte{0, 0, 0}) {
		t.Fatalf("the drain wrote into the linked file, or reserved no slot:\n%q", linked)
	}
	if err := b.Recover(context.Background()); !errors.Is(err, backends.ErrLinked) {
		t.Fatalf("Recover with the link = %v, want ErrLinked", err)
	}
	if got, _ := os.ReadFile(link); !bytes.Equal(got, linked) {
		t.Fatal("the linked file was written into by the recovery")
	}

	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := b.Recover(context.Background()); err != nil {
		t.Fatalf("Recover once the link is gone: %v", err)
	}
	got, _ := os.ReadFile(path)
	if n := bytes.Count(got, []byte(late)); n != 1 {
		t.Fatalf("the late record is in the file %d times, want once:\n%s", n, got)
	}
	if bytes.IndexByte(got, 0) >= 0 {
		t.Fatalf("NUL bytes left in the file:\n%q", got)
	}
	assertNoLeftovers(t, dir)
}
