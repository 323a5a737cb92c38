package jsonfile

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/papyra/watcher/backends"
)

// fixtureCase is a golden case's case.json.
type fixtureCase struct {
	Backend      string             `json:"backend"`
	Now          float64            `json:"now"`
	Retention    backends.Retention `json:"retention"`
	Source       string             `json:"source"`
	PapyraReport *struct {
		BeforeRecords int64 `json:"before_records"`
		AfterRecords  int64 `json:"after_records"`
	} `json:"papyra_report"`
}

func loadCase(t testing.TB, dir string) fixtureCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c fixtureCase
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return c
}

func unixTime(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// TestJSONFixtures compacts every golden json case and compares byte for
// byte with method copy; with auto, the output is the same after at most
// one filler line, and every line of it parses as JSON (Papyra's scan).
// The partial-line case's file is fresh, so its tail is kept.
func TestJSONFixtures(t *testing.T) {
	dirs, err := filepath.Glob("testdata/json/*")
	if err != nil || len(dirs) < 13 {
		t.Fatalf("fixtures: %v, %d cases", err, len(dirs))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			c := loadCase(t, dir)
			input, err := os.ReadFile(filepath.Join(dir, "input.ndjson"))
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(dir, "expected.ndjson"))
			if err != nil {
				t.Fatal(err)
			}
			for _, run := range []struct {
				method string
				dry    bool
			}{{backends.MethodCopy, true}, {backends.MethodCopy, false}, {backends.MethodAuto, true}, {backends.MethodAuto, false}} {
				dry := run.dry
				tmp := t.TempDir()
				path := filepath.Join(tmp, "events.ndjson")
				if err := os.WriteFile(path, input, 0o640); err != nil {
					t.Fatal(err)
				}
				b, err := New(Config{Name: "events", Path: path, StateDir: filepath.Join(tmp, "state"), Method: run.method})
				if err != nil {
					t.Fatal(err)
				}
				rep, err := b.Compact(context.Background(), backends.CompactOptions{
					Retention: c.Retention, Now: unixTime(c.Now), DryRun: dry, PartialLineGrace: 30 * time.Second,
				})
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if dry {
					if !bytes.Equal(got, input) {
						t.Fatal("dry run changed the file")
					}
				} else {
					body := got
					if rep.Method == backends.MethodInPlace {
						body = stripFiller(t, got)
						// A line still being written (kept unterminated)
						// is reported by Papyra's scan before and after.
						papyraScan(t, got[:bytes.LastIndexByte(got, '\n')+1])
						got = body
					}
					if !bytes.Equal(body, want) {
						t.Fatalf("method %s (ran %s): output differs from expected.ndjson:\ngot  %d bytes\nwant %d bytes\n%s", run.method, rep.Method, len(body), len(want), firstDiff(body, want))
					}
				}
				if rep.Method == backends.MethodInPlace {
					want := int64(len(input)) - (*rep.BeforeBytes - *rep.AfterBytes)
					if *rep.AfterBytes != want {
						t.Errorf("in place, dry=%v: after_bytes %d, want %d", dry, *rep.AfterBytes, want)
					}
				} else if *rep.AfterBytes != int64(len(want)) || *rep.BeforeBytes != int64(len(input)) {
					t.Errorf("dry=%v bytes before/after = %d/%d, want %d/%d", dry, *rep.BeforeBytes, *rep.AfterBytes, len(input), len(want))
				}
				if c.PapyraReport != nil && rep.AfterRecords != c.PapyraReport.AfterRecords {
					t.Errorf("after_records = %d, Papyra said %d", rep.AfterRecords, c.PapyraReport.AfterRecords)
				}
				// Unparsed lines older than the cut that are shaped like
				// records count as records: Papyra's count here.
				if c.PapyraReport != nil && rep.BeforeRecords != c.PapyraReport.BeforeRecords {
					t.Errorf("before_records = %d, Papyra said %d", rep.BeforeRecords, c.PapyraReport.BeforeRecords)
				}
				checkReportInvariants(t, rep)
				if fi, err := os.Stat(path); err == nil && len(input) > 0 && fi.Mode().Perm() != 0o640 {
					t.Errorf("mode %v, want 0640", fi.Mode().Perm())
				}
				assertNoLeftovers(t, tmp)
			}
		})
	}
}

// papyraScan fails the test where Papyra's scan() would report a line:
// one that is not JSON (a blank line included), or an unterminated last
// line; and the whole file when it is not valid UTF-8 (Papyra reads strict
// UTF-8).
func papyraScan(t testing.TB, b []byte) {
	t.Helper()
	if !utf8.Valid(b) {
		t.Errorf("UnicodeDecodeError: the file is not valid UTF-8")
		return
	}
	for i, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if line[len(line)-1] != '\n' {
			t.Errorf("line %d: TRUNCATED_LINE %q", i+1, line[:min(len(line), 60)])
			continue
		}
		if !json.Valid(bytes.TrimSpace(line)) {
			t.Errorf("line %d: CORRUPTED_LINE %q", i+1, line[:min(len(line), 60)])
		}
	}
}

func checkReportInvariants(t testing.TB, rep backends.Report) {
	t.Helper()
	d := rep.Dropped
	if got := d.Age + d.Count + d.Bytes + d.NoTimestamp + d.Unexamined; got != rep.RemovedRecords {
		t.Errorf("removed_records %d != dropped records %d (%+v)", rep.RemovedRecords, got, d)
	}
	if rep.RemovedRecords != rep.BeforeRecords-rep.AfterRecords {
		t.Errorf("removed_records not before-after: %+v", rep)
	}
}

// assertNoLeftovers fails when dir holds a temp file or old link.
func assertNoLeftovers(t testing.TB, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if bytes.Contains([]byte(e.Name()), []byte(".watcher-")) {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func firstDiff(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	lo := max(0, i-80)
	return "first difference at byte " + itoa(i) + ":\ngot:  " + string(a[lo:min(len(a), i+80)]) + "\nwant: " + string(b[lo:min(len(b), i+80)])
}

func itoa(i int) string { return strconv.Itoa(i) }
