package rotating

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/papyra/watcher/backends"
)

// TestRotAppenderRefusesLinkedFile: the catch-up writes into its staged
// file at an offset, never into one with a second link (a backup
// snapshot's): ErrLinked, and the file keeps its bytes. A file with one
// link is written at the tracked offset.
func TestRotAppenderRefusesLinkedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "staged")
	if err := os.WriteFile(path, []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Link(path, filepath.Join(dir, "snapshot-link")); err != nil {
		t.Fatal(err)
	}
	w := &rotAppender{f: f, off: 2}
	if n, err := w.Write([]byte("XX\n")); n != 0 || !errors.Is(err, backends.ErrLinked) {
		t.Fatalf("Write into a linked file = %d, %v; want 0 and ErrLinked", n, err)
	}
	if got, _ := os.ReadFile(path); string(got) != "kept\n" {
		t.Fatalf("the linked file changed: %q", got)
	}

	if err := os.Remove(filepath.Join(dir, "snapshot-link")); err != nil {
		t.Fatal(err)
	}
	w = &rotAppender{f: f, off: 5}
	for _, p := range []string{"a\n", "b\n"} {
		if _, err := w.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.ReadFile(path); string(got) != "kept\na\nb\n" || w.off != 9 {
		t.Fatalf("file %q, offset %d; want the lines at the tracked offset", got, w.off)
	}
}
