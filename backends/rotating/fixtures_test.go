package rotating

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
)

// rotCase is a rotating golden case's case.json.
type rotCase struct {
	Active       string             `json:"active"`
	MaxBytes     int64              `json:"max_bytes"`
	MaxFiles     int                `json:"max_files"`
	Now          float64            `json:"now"`
	Retention    backends.Retention `json:"retention"`
	Source       string             `json:"source"`
	PapyraReport struct {
		AfterRecords  int64 `json:"after_records"`
		BeforeRecords int64 `json:"before_records"`
	} `json:"papyra_report"`
}

// rotReadDir returns name → content of the regular files in dir.
func rotReadDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			out[e.Name()+"/"] = nil
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func rotCopyDir(t *testing.T, from, to string) {
	t.Helper()
	for name, b := range rotReadDir(t, from) {
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func rotUnixTime(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// TestRotatingGoldenCases compacts every golden case's input with the
// method copy, which must give the expected files byte for byte, and with
// auto, which must give the expected records in the same order (in place
// keeps the files' boundaries and may leave a filler line first in a file)
// in files that pass Papyra's scan. A dry run changes nothing. The method
// auto runs in place wherever the test's temporary directory allows (ext4).
func TestRotatingGoldenCases(t *testing.T) {
	cases, err := filepath.Glob("testdata/rotating/*/case.json")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no rotating golden cases in testdata/rotating (%v)", err)
	}
	for _, cp := range cases {
		caseDir := filepath.Dir(cp)
		for _, method := range []string{backends.MethodCopy, backends.MethodAuto} {
			t.Run(filepath.Base(caseDir)+"/"+method, func(t *testing.T) {
				var c rotCase
				b, err := os.ReadFile(cp)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(b, &c); err != nil {
					t.Fatal(err)
				}
				for _, dry := range []bool{true, false} {
					rotGoldenRun(t, caseDir, c, method, dry, t.TempDir())
				}
			})
		}
	}
}

// rotGoldenRun compacts a copy of the golden case in caseDir/input in dir
// and checks the result (see TestRotatingGoldenCases). It returns the
// report.
func rotGoldenRun(t *testing.T, caseDir string, c rotCase, method string, dry bool, dir string) backends.Report {
	t.Helper()
	rotCopyDir(t, filepath.Join(caseDir, "input"), dir)
	// An orphan beyond max_files-1 must be left alone.
	orphan := filepath.Join(dir, c.Active+"."+strconv.Itoa(c.MaxFiles+2))
	if err := os.WriteFile(orphan, []byte("{\"kind\":\"event\",\"timestamp\":1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := rotReadDir(t, dir)
	rb, err := New(Config{Name: "golden", Path: filepath.Join(dir, c.Active),
		MaxBytes: c.MaxBytes, MaxFiles: c.MaxFiles, StateDir: filepath.Join(t.TempDir(), "state"), Method: method})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := rb.Compact(context.Background(), backends.CompactOptions{Retention: c.Retention, Now: rotUnixTime(c.Now), DryRun: dry})
	if err != nil {
		t.Fatal(err)
	}
	if rep.BeforeRecords != c.PapyraReport.BeforeRecords || rep.AfterRecords != c.PapyraReport.AfterRecords {
		t.Errorf("dry=%v: records %d → %d, Papyra: %d → %d", dry, rep.BeforeRecords, rep.AfterRecords,
			c.PapyraReport.BeforeRecords, c.PapyraReport.AfterRecords)
	}
	t.Logf("dry=%v: method %s ran %s; notes %q", dry, method, rep.Method, rep.Notes)
	if method == backends.MethodCopy && rep.Method != backends.MethodCopy {
		t.Errorf("dry=%v: method %q, want copy", dry, rep.Method)
	}
	got := rotReadDir(t, dir)
	if dry {
		rotCompareDirs(t, got, before)
		return rep
	}
	if !bytes.Equal(got[filepath.Base(orphan)], before[filepath.Base(orphan)]) {
		t.Errorf("the orphan %s changed", filepath.Base(orphan))
	}
	delete(got, filepath.Base(orphan))
	want := rotReadDir(t, filepath.Join(caseDir, "expected"))
	if method == backends.MethodCopy {
		rotCompareDirs(t, got, want)
	} else {
		wantRecs := rotRecordsOf(t, want, c.Active, c.MaxFiles)
		gotRecs := rotRecordsOf(t, got, c.Active, c.MaxFiles)
		rotSameRecords(t, gotRecs, wantRecs)
	}
	var afterBytes int64
	for _, b := range got {
		afterBytes += int64(len(b))
	}
	if rep.AfterBytes == nil || *rep.AfterBytes != afterBytes {
		t.Errorf("after_bytes %v, files hold %d", rep.AfterBytes, afterBytes)
	}
	return rep
}

func rotCompareDirs(t *testing.T, got, want map[string][]byte) {
	t.Helper()
	var names []string
	for n := range got {
		names = append(names, n)
	}
	for n := range want {
		if _, ok := got[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		g, gok := got[n]
		w, wok := want[n]
		switch {
		case !gok:
			t.Errorf("%s missing", n)
		case !wok:
			t.Errorf("%s present, not expected (%d bytes)", n, len(g))
		case !bytes.Equal(g, w):
			t.Errorf("%s differs: %d bytes, want %d\n got: %.300q\nwant: %.300q", n, len(g), len(w), g, w)
		}
	}
}
