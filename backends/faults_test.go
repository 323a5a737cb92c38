package backends

// Faults in the state directory, white-box: what a kill in the middle of a
// journal write leaves, a journal that is corrupt, and a state directory
// that is not a directory. In each case no data may be lost or changed,
// and errors must name what is wrong.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// faultBackends returns a json and a rotating backend over fresh files in
// dir, with their state directory, and the files' paths.
func faultBackends(t *testing.T, dir string) (map[string]Backend, map[string]string) {
	t.Helper()
	state := filepath.Join(dir, "state")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.ReadFile("testdata/json/count/input.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	jp := filepath.Join(data, "events.ndjson")
	rp := filepath.Join(data, "rot.ndjson")
	for _, p := range []string{jp, rp} {
		if err := os.WriteFile(p, in, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	j, err := NewJSON(JSONConfig{Name: "events", Path: jp, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRotating(RotatingConfig{Name: "rot", Path: rp, MaxBytes: 1 << 20, MaxFiles: 3, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Backend{"json": j, "rotating": r}, map[string]string{"json": jp, "rotating": rp}
}

// journalOf returns the journal path of b.
func journalOf(b Backend, path string) string {
	switch b := b.(type) {
	case *JSON:
		return b.journalPath
	case *Rotating:
		return b.journalPath(path)
	}
	panic("unknown backend")
}

// TestFaultsJournalTempLeftover: a kill while the journal is being written
// (writeFileAtomic: temp file, fsync, rename) leaves the journal's
// temporary file in the state directory. Recover, which runs at start and
// before every compaction, must remove it, as it removes the temporary
// files beside the target, and nothing else.
func TestFaultsJournalTempLeftover(t *testing.T) {
	bks, paths := faultBackends(t, t.TempDir())
	for _, kind := range []string{"json", "rotating"} {
		t.Run(kind, func(t *testing.T) {
			b, path := bks[kind], paths[kind]
			jp := journalOf(b, path)
			if err := os.MkdirAll(filepath.Dir(jp), 0o700); err != nil {
				t.Fatal(err)
			}
			leftover := filepath.Join(filepath.Dir(jp), tempPrefix(filepath.Base(jp))+"0123456789abcdef")
			if err := os.WriteFile(leftover, []byte(`{"version": 1, "tar`), 0o600); err != nil {
				t.Fatal(err)
			}
			// Someone else's file in the state directory stays.
			other := filepath.Join(filepath.Dir(jp), "operator-notes.txt")
			if err := os.WriteFile(other, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(path)
			if err := b.Recover(context.Background()); err != nil {
				t.Fatalf("Recover: %v", err)
			}
			if _, err := os.Stat(leftover); err == nil {
				// Found by integration TestCrashLiveWriter/json; fixed in
				// e424f8d.
				t.Fatalf("the journal's temporary file %s survives Recover", filepath.Base(leftover))
			}
			if _, err := os.Stat(other); err != nil {
				t.Errorf("Recover removed a file that is not its own: %v", err)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Errorf("Recover changed the target")
			}
		})
	}
}

// TestFaultsCorruptJournal: a journal that cannot be decoded (truncated,
// garbage, wrong type) makes Recover and Compact fail with an error naming
// the journal, and changes nothing: the target, and for json the old
// file's link, stay as they are, so an operator can decide.
func TestFaultsCorruptJournal(t *testing.T) {
	for _, garbage := range []string{`{"version": 1, "target": "ev`, "\x00\x01\x02garbage", `[1,2,3]`, `{"version": "one"}`} {
		bks, paths := faultBackends(t, t.TempDir())
		for _, kind := range []string{"json", "rotating"} {
			b, path := bks[kind], paths[kind]
			jp := journalOf(b, path)
			if err := os.MkdirAll(filepath.Dir(jp), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(jp, []byte(garbage), 0o600); err != nil {
				t.Fatal(err)
			}
			var link string
			if kind == "json" {
				link = oldLinkName(path)
				if err := os.Link(path, link); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(path)
			err := b.Recover(context.Background())
			if err == nil {
				t.Errorf("%s, journal %q: Recover accepted a corrupt journal", kind, garbage)
				continue
			}
			if !strings.Contains(err.Error(), jp) {
				t.Errorf("%s: Recover's error does not name the journal %s: %v", kind, jp, err)
			}
			_, err = b.Compact(context.Background(), CompactOptions{Retention: Retention{MaxRecords: Int64(1)}, Now: time.Unix(1795600000, 0)})
			if err == nil {
				t.Errorf("%s, journal %q: Compact ran over a corrupt journal", kind, garbage)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Errorf("%s, journal %q: the target changed", kind, garbage)
			}
			if data, _ := os.ReadFile(jp); string(data) != garbage {
				t.Errorf("%s: the corrupt journal was changed or removed: an operator must see it", kind)
			}
			if link != "" {
				if _, err := os.Lstat(link); err != nil {
					t.Errorf("json: the old file's link was removed under a corrupt journal: %v", err)
				}
			}
		}
	}
}

// TestFaultsStateDirNotADirectory: a state directory path that is a file
// makes Compact fail with an error naming it; the target is unchanged.
func TestFaultsStateDirNotADirectory(t *testing.T) {
	dir := t.TempDir()
	bks, paths := faultBackends(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	for kind, b := range bks {
		before, _ := os.ReadFile(paths[kind])
		_, err := b.Compact(context.Background(), CompactOptions{Retention: Retention{MaxRecords: Int64(1)}, Now: time.Unix(1795600000, 0)})
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "state")) {
			t.Errorf("%s: Compact with a state directory that is a file: %v; want an error naming it", kind, err)
		}
		if after, _ := os.ReadFile(paths[kind]); !bytes.Equal(before, after) {
			t.Errorf("%s: the target changed", kind)
		}
	}
}
