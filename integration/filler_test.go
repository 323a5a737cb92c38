package integration

// Reading target files after a compaction with the default method "auto".
// Where the filesystem can collapse a range of a file (ext4, XFS; /tmp is
// often one), a compaction cuts the dropped head out of the file in place
// and may leave one filler line (spaces, then "0", then a newline:
// ndjson.Filler) as the first line of a file; in a rotating set, of each
// file. Papyra's reader skips it and its scan accepts it. Tests that count
// a target's lines or compare its content after such a compaction read it
// through trimFiller (readTarget, readTargetFiles), which removes that one
// line and fails the test if a filler line shows up anywhere else in the
// file: it is never a record, and never anything but the first line.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/papyra/watcher/backends/ndjson"
)

// trimFiller returns data, the content of the file name, without its
// first line when that line is a filler line (ndjson.IsFiller). It fails
// the test if any later line is a filler line.
func trimFiller(t testing.TB, name string, data []byte) []byte {
	t.Helper()
	rest, lineNo := data, 1
	if i := bytes.IndexByte(data, '\n'); i >= 0 && ndjson.IsFiller(data[:i+1]) {
		rest, lineNo = data[i+1:], 2
	}
	for off := 0; off < len(rest); lineNo++ {
		n := bytes.IndexByte(rest[off:], '\n')
		if n < 0 {
			break // an unterminated last line is not a filler line
		}
		if line := rest[off : off+n+1]; ndjson.IsFiller(line) {
			t.Fatalf("%s: line %d (offset %d, %d bytes) is a filler line: an in-place compaction leaves at most one, as the first line of a file",
				name, lineNo, len(data)-len(rest)+off, len(line))
		}
		off += n + 1
	}
	return rest
}

// readTarget reads the target file at path as its records are: without
// the filler line an in-place compaction may leave first (trimFiller).
func readTarget(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return trimFiller(t, path, data)
}

// readTargetFiles is readDirFiles for the files of a target (a rotating
// set): each without the filler line an in-place compaction may leave
// first (trimFiller).
func readTargetFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	files := readDirFiles(t, dir)
	for name, data := range files {
		files[name] = trimFiller(t, filepath.Join(dir, name), data)
	}
	return files
}

// invalidJSONLines returns the 1-based numbers of the newline-terminated
// lines of data that are not valid JSON, which Papyra's scan() reports as
// corrupted; the filler line is valid JSON (the number 0).
func invalidJSONLines(data []byte) []int {
	var bad []int
	for i, line := range splitLines(data) {
		if line[len(line)-1] == '\n' && !json.Valid(line) {
			bad = append(bad, i+1)
		}
	}
	return bad
}

// TestTrimFiller: the helper removes one filler line first in a file, and
// only there.
func TestTrimFiller(t *testing.T) {
	rec := []byte(`{"kind": "event", "timestamp": 1.0}` + "\n")
	filler := ndjson.Filler(40)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name       string
		data, want []byte
	}{
		{"empty", nil, nil},
		{"no filler", join(rec, rec), join(rec, rec)},
		{"filler first", join(filler, rec, rec), join(rec, rec)},
		{"shortest filler", join(ndjson.Filler(ndjson.MinFiller), rec), rec},
		{"filler alone", filler, []byte{}},
		{"unterminated last line", join(filler, rec, []byte(`{"kind"`)), join(rec, []byte(`{"kind"`))},
		{"spaces then 0, unterminated", []byte("   0"), []byte("   0")},
		{"a blank line is not a filler", join([]byte("    \n"), rec), join([]byte("    \n"), rec)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := trimFiller(t, "f", tc.data); !bytes.Equal(got, tc.want) {
				t.Errorf("trimFiller(%q) = %q, want %q", tc.data, got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"filler second", join(rec, filler, rec)},
		{"filler last", join(rec, filler)},
		{"two fillers first", join(filler, filler, rec)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fatalRecorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				trimFiller(ft, "f", tc.data)
			}()
			<-done
			if !ft.failed {
				t.Errorf("trimFiller(%q) accepted a filler line that is not first", tc.data)
			}
		})
	}
	if bad := invalidJSONLines(join(filler, rec, []byte("{\"kind\n"), rec, []byte("{"))); len(bad) != 1 || bad[0] != 3 {
		t.Errorf("invalidJSONLines: %v, want [3] (the filler is valid JSON; an unterminated last line is not judged)", bad)
	}
}

// fatalRecorder records a Fatalf instead of failing the test; Fatalf ends
// the goroutine that calls it, as testing's does.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.failed = true
	f.Logf("(expected) "+format, args...)
	runtime.Goexit()
}
