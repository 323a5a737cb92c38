package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// goldenCase is testdata/papyra/<backend>/<case>/case.json.
type goldenCase struct {
	Backend      string                     `json:"backend"`
	Active       string                     `json:"active"`
	MaxBytes     int64                      `json:"max_bytes"`
	MaxFiles     int                        `json:"max_files"`
	Now          json.Number                `json:"now"`
	Retention    map[string]json.RawMessage `json:"retention"`
	Source       string                     `json:"source"`
	PapyraReport map[string]int64           `json:"papyra_report"`
}

func loadCase(t *testing.T, dir string) goldenCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c goldenCase
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s/case.json: %v", dir, err)
	}
	return c
}

// retentionTOML renders a case's retention as a [target.retention] table.
func retentionTOML(ret map[string]json.RawMessage) string {
	keys := make([]string, 0, len(ret))
	for k := range ret {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("[target.retention]\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, ret[k])
	}
	return b.String()
}

// baseConfig is [watcher], [policy] and [triggers] for one-shot compactions:
// no HTTP, no timer, and a partial-line grace long enough that an
// unterminated last line is always a write in flight.
const baseConfig = `[watcher]
state_dir = "state"
http_listen = ""

[policy]
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"
`

func sumBytes(files map[string][]byte) int64 {
	var n int64
	for _, d := range files {
		n += int64(len(d))
	}
	return n
}

// goldenMethods are the methods every golden case runs with. "copy"
// rewrites the files, and the golden outputs are its result byte for byte.
// "auto" (the default) may compact in place where the filesystem can
// (ext4, XFS): the same records in the same order, but a file may begin
// with one filler line and a rotating set keeps its files as the writer
// made them instead of being cut into new chunks; where auto rewrites
// (method "copy" in its report), the result is again the golden output
// byte for byte.
var goldenMethods = []string{"copy", "auto"}

// goldenInPlaceCheck is registered by a golden test: once all its cases
// ran, it fails the test unless at least one auto run compacted in place
// on a filesystem that can (else the auto runs test nothing the copy runs
// do not). It is skipped when -run selected only some of the auto runs.
func goldenInPlaceCheck(t *testing.T, cases int, autoRuns, inPlace *atomic.Int64) {
	t.Cleanup(func() {
		tmp := os.TempDir()
		if autoRuns.Load() == int64(cases) && inPlace.Load() == 0 && fsx.CanCollapse(tmp) {
			t.Errorf("none of the %d golden cases was compacted in place by method auto, on %s which can collapse a range: the auto runs do not exercise in-place compaction", cases, tmp)
		}
	})
}

// TestGoldenJSON compacts every json golden case with the built binary:
// with method "copy" the file must be expected.ndjson byte for byte; with
// the default "auto", expected.ndjson after at most one leading filler
// line, every line valid JSON (goldenMethods).
func TestGoldenJSON(t *testing.T) {
	cases, err := filepath.Glob("testdata/papyra/json/*/case.json")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no json golden cases in testdata/papyra/json (err %v)", err)
	}
	var autoRuns, inPlace atomic.Int64
	goldenInPlaceCheck(t, len(cases), &autoRuns, &inPlace)
	for _, cj := range cases {
		src := filepath.Dir(cj)
		for _, method := range goldenMethods {
			t.Run(filepath.Base(src)+"/"+method, func(t *testing.T) {
				t.Parallel()
				if method == "auto" {
					autoRuns.Add(1)
				}
				if goldenJSON(t, src, method) == backends.MethodInPlace {
					inPlace.Add(1)
				}
			})
		}
	}
}

// goldenJSON runs the json golden case in src with method and returns the
// method its report says ran.
func goldenJSON(t *testing.T, src, method string) string {
	c := loadCase(t, src)
	input, err := os.ReadFile(filepath.Join(src, "input.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	expected, err := os.ReadFile(filepath.Join(src, "expected.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, path, input)
	cfg := writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "golden"
backend = "json"
path = "data/events.ndjson"
method = %q
`, method)+retentionTOML(c.Retention))

	r := runWatcher(t, 60*time.Second, "compact", "--config", cfg, "--now", c.Now.String(), "--json")
	wantCode(t, r, 0, "compact")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 {
		t.Fatalf("want 1 report, got %d:\n%s", len(reps), r.Stdout)
	}
	rep := reps[0]
	t.Logf("method %s: report says %s", method, rep.Method)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkGoldenMethod(t, rep, method)
	if rep.Method == backends.MethodInPlace {
		// The file as left, filler line included.
		checkGoldenReport(t, rep, c, "json", int64(len(input)), int64(len(got)))
		if records := trimFiller(t, path, got); !bytes.Equal(records, expected) {
			t.Fatalf("compacted in place, the file without its filler line differs from expected.ndjson\n--- got (%d bytes, %d without the filler):\n%s\n--- want (%d bytes):\n%s",
				len(got), len(records), clip(got), len(expected), clip(expected))
		}
		if bad := invalidJSONLines(got); len(bad) > 0 {
			t.Errorf("compacted in place, lines %v are not valid JSON (Papyra's scan reports them as corrupted):\n%s", bad, clip(got))
		}
	} else {
		checkGoldenReport(t, rep, c, "json", int64(len(input)), int64(len(expected)))
		if !bytes.Equal(got, expected) {
			t.Fatalf("compacted file (method %s) differs from expected.ndjson\n--- got (%d bytes):\n%s\n--- want (%d bytes):\n%s",
				rep.Method, len(got), clip(got), len(expected), clip(expected))
		}
	}
	wantNoLeftovers(t, filepath.Join(dir, "data"))
	return rep.Method
}

// checkGoldenMethod fails unless the report's method is one that the
// configured method can run: "copy" never compacts in place.
func checkGoldenMethod(t *testing.T, rep report, method string) {
	t.Helper()
	switch rep.Method {
	case backends.MethodCopy, backends.MethodNone:
	case backends.MethodInPlace:
		if method == backends.MethodCopy {
			t.Errorf("method = \"copy\" and the report says in_place:\n%+v", rep)
		}
	default:
		t.Errorf("report method %q, want in_place, copy or none", rep.Method)
	}
}

// TestGoldenRotating compacts every rotating golden case with the built
// binary: with method "copy" the set must be exactly the expected files,
// byte for byte; with the default "auto", when it compacts in place (or
// changes nothing), the set read oldest first must be the expected records
// in order, each file without at most one leading filler line, every line
// valid JSON, under the names the writer uses (goldenMethods).
func TestGoldenRotating(t *testing.T) {
	cases, err := filepath.Glob("testdata/papyra/rotating/*/case.json")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no rotating golden cases in testdata/papyra/rotating (err %v)", err)
	}
	var autoRuns, inPlace atomic.Int64
	goldenInPlaceCheck(t, len(cases), &autoRuns, &inPlace)
	for _, cj := range cases {
		src := filepath.Dir(cj)
		for _, method := range goldenMethods {
			t.Run(filepath.Base(src)+"/"+method, func(t *testing.T) {
				t.Parallel()
				if method == "auto" {
					autoRuns.Add(1)
				}
				if goldenRotating(t, src, method) == backends.MethodInPlace {
					inPlace.Add(1)
				}
			})
		}
	}
}

// goldenRotating runs the rotating golden case in src with method and
// returns the method its report says ran.
func goldenRotating(t *testing.T, src, method string) string {
	c := loadCase(t, src)
	if c.Active == "" || c.MaxBytes <= 0 || c.MaxFiles <= 0 {
		t.Fatalf("case.json lacks active, max_bytes or max_files: %+v", c)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	copyDir(t, filepath.Join(src, "input"), data)
	input := readDirFiles(t, data)
	expected := readDirFiles(t, filepath.Join(src, "expected"))
	cfg := writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "golden"
backend = "rotating"
path = "data/%s"
max_bytes = %d
max_files = %d
method = %q
`, c.Active, c.MaxBytes, c.MaxFiles, method)+retentionTOML(c.Retention))

	r := runWatcher(t, 60*time.Second, "compact", "--config", cfg, "--now", c.Now.String(), "--json")
	wantCode(t, r, 0, "compact")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 {
		t.Fatalf("want 1 report, got %d:\n%s", len(reps), r.Stdout)
	}
	rep := reps[0]
	t.Logf("method %s: report says %s", method, rep.Method)
	checkGoldenMethod(t, rep, method)
	got := readDirFiles(t, data)
	if rep.Method == backends.MethodCopy || method == backends.MethodCopy {
		checkGoldenReport(t, rep, c, "rotating", sumBytes(input), sumBytes(expected))
		if names(got) != names(expected) {
			t.Fatalf("files after compaction (method %s): %s; want exactly %s", rep.Method, names(got), names(expected))
		}
		for name, want := range expected {
			if !bytes.Equal(got[name], want) {
				t.Errorf("%s differs from expected (method %s)\n--- got (%d bytes):\n%s\n--- want (%d bytes):\n%s",
					name, rep.Method, len(got[name]), clip(got[name]), len(want), clip(want))
			}
		}
		return rep.Method
	}
	// In place or nothing to change: the writer's files, as they were
	// left, filler lines included.
	checkGoldenReport(t, rep, c, "rotating", sumBytes(input), sumBytes(got))
	segments := map[string]bool{c.Active: true}
	for i := 1; i < c.MaxFiles; i++ {
		segments[c.Active+"."+strconv.Itoa(i)] = true
	}
	for name, d := range got {
		if !segments[name] {
			t.Errorf("after compaction (method %s) the set holds %s, which is not one of the writer's names (%s and .1 to .%d)", rep.Method, name, c.Active, c.MaxFiles-1)
		}
		if bad := invalidJSONLines(d); len(bad) > 0 {
			t.Errorf("%s: lines %v are not valid JSON (Papyra's scan reports them as corrupted):\n%s", name, bad, clip(d))
		}
	}
	trimmed := map[string][]byte{}
	for name, d := range got {
		trimmed[name] = trimFiller(t, filepath.Join(data, name), d)
	}
	gotRecs, wantRecs := setRecords(trimmed, c.Active, c.MaxFiles), setRecords(expected, c.Active, c.MaxFiles)
	if !bytes.Equal(gotRecs, wantRecs) {
		t.Fatalf("method %s: the set read oldest first (filler lines left out) is not the expected records in order; files now %s, expected %s\n--- got (%d bytes):\n%s\n--- want (%d bytes):\n%s",
			rep.Method, names(got), names(expected), len(gotRecs), clip(gotRecs), len(wantRecs), clip(wantRecs))
	}
	return rep.Method
}

// setRecords returns the files of a rotating set (named from active)
// concatenated oldest first: active.<maxFiles-1> … active.1, active.
func setRecords(files map[string][]byte, active string, maxFiles int) []byte {
	var b []byte
	for i := maxFiles - 1; i >= 0; i-- {
		name := active
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		b = append(b, files[name]...)
	}
	return b
}

func checkGoldenReport(t *testing.T, r report, c goldenCase, backend string, beforeBytes, afterBytes int64) {
	t.Helper()
	if r.Target != "golden" || r.Backend != backend || r.Trigger != "manual" || r.DryRun || r.Error != "" {
		t.Errorf("report: target %q backend %q trigger %q dry_run %v error %q; want golden, %s, manual, false, no error",
			r.Target, r.Backend, r.Trigger, r.DryRun, r.Error, backend)
	}
	// Lines older than the retention cut are not parsed; those shaped like
	// records ('{' … '}') are counted as records, which is Papyra's count
	// for every golden case.
	if want, ok := c.PapyraReport["before_records"]; ok && r.BeforeRecords != want {
		t.Errorf("before_records = %d, Papyra's report says %d (dropped.unexamined %d)",
			r.BeforeRecords, want, r.Dropped.Unexamined)
	}
	if want, ok := c.PapyraReport["after_records"]; ok && r.AfterRecords != want {
		t.Errorf("after_records = %d, Papyra's report says %d", r.AfterRecords, want)
	}
	if r.BeforeBytes == nil || *r.BeforeBytes != beforeBytes {
		t.Errorf("before_bytes = %v, want %d (the input's size)", deref(r.BeforeBytes), beforeBytes)
	}
	if r.AfterBytes == nil || *r.AfterBytes != afterBytes {
		t.Errorf("after_bytes = %v, want %d (the expected output's size)", deref(r.AfterBytes), afterBytes)
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

func names(files map[string][]byte) string {
	n := make([]string, 0, len(files))
	for k := range files {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// clip shortens data for a failure message.
func clip(data []byte) string {
	if len(data) > 2000 {
		return string(data[:1000]) + fmt.Sprintf("\n… %d bytes …\n", len(data)-2000) + string(data[len(data)-1000:])
	}
	return string(data)
}

func TestVersion(t *testing.T) {
	r := runWatcher(t, 10*time.Second, "version")
	wantCode(t, r, 0, "watcher version")
	if !strings.HasPrefix(r.Stdout, "watcher ") || !strings.Contains(r.Stdout, "go1.") {
		t.Errorf("version output %q: want \"watcher <version> (… go1.x …)\"", r.Stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, baseConfig)
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "Usage"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"compact", "--config", cfg, "--bogus"}, "bogus"},
		{"bad --now", []string{"compact", "--config", cfg, "--now", "yesterday"}, "yesterday"},
		{"stray argument", []string{"compact", "--config", cfg, "extra"}, "extra"},
		{"missing config", []string{"compact", "--config", filepath.Join(dir, "nope.toml")}, "nope.toml"},
		{"validate missing config", []string{"validate", "--config", filepath.Join(dir, "nope.toml")}, "nope.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runWatcher(t, 10*time.Second, tc.args...)
			wantCode(t, r, 2, strings.Join(tc.args, " "))
			if !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("stderr does not mention %q:\n%s", tc.want, r.Stderr)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Run("repo config.toml", func(t *testing.T) {
		dir := t.TempDir()
		data, err := os.ReadFile(filepath.Join(repoRoot, "config.toml"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := writeConfig(t, dir, string(data))
		r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
		wantCode(t, r, 0, "validate config.toml")
		if !strings.Contains(r.Stdout, "valid") {
			t.Errorf("stdout does not say valid: %q", r.Stdout)
		}
	})
	t.Run("valid with warning", func(t *testing.T) {
		dir := t.TempDir()
		cfg := writeConfig(t, dir, baseConfig+`
[[target]]
name = "events"
backend = "json"
path = "data/events.ndjson"
`)
		r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
		wantCode(t, r, 0, "validate")
		if !strings.Contains(r.Stderr, "warning") || !strings.Contains(r.Stderr, "retention") {
			t.Errorf("a target without retention should be warned about; stderr:\n%s", r.Stderr)
		}
	})
	t.Run("unknown keys are named with their lines", func(t *testing.T) {
		dir := t.TempDir()
		// Line numbers matter: bogus_key is on line 3, colour on line 9.
		cfg := writeConfig(t, dir, `[watcher]
state_dir = "state"
bogus_key = 1

[[target]]
name = "events"
backend = "json"
path = "data/events.ndjson"
colour = "blue"
[target.retention]
max_records = 10
`)
		r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
		wantCode(t, r, 2, "validate")
		for _, want := range []string{"line 3", "bogus_key", "line 9", "colour", "config.toml"} {
			if !strings.Contains(r.Stderr, want) {
				t.Errorf("stderr does not mention %q:\n%s", want, r.Stderr)
			}
		}
	})
	t.Run("syntax error has its line", func(t *testing.T) {
		dir := t.TempDir()
		cfg := writeConfig(t, dir, "[watcher]\nstate_dir = \"state\"\nlog_level = \n")
		r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
		wantCode(t, r, 2, "validate")
		if !regexp.MustCompile(`line 3\b`).MatchString(r.Stderr) {
			t.Errorf("stderr does not name line 3:\n%s", r.Stderr)
		}
	})
	for _, bad := range []string{`"5 seconds"`, `5`} {
		t.Run("bad duration "+bad+" has its line and key", func(t *testing.T) {
			dir := t.TempDir()
			cfg := writeConfig(t, dir, "[watcher]\nstate_dir = \"state\"\n\n[policy]\ndebounce = "+bad+"\n")
			r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
			wantCode(t, r, 2, "validate")
			if !strings.Contains(r.Stderr, "line 5") || !strings.Contains(r.Stderr, "debounce") {
				t.Errorf("stderr does not name line 5 and debounce:\n%s", r.Stderr)
			}
		})
	}
	t.Run("every semantic problem is listed", func(t *testing.T) {
		dir := t.TempDir()
		cfg := writeConfig(t, dir, `[watcher]
log_level = "loud"

[policy]
debounce = "10s"
max_wait = "1s"

[[target]]
name = "a"
backend = "json"

[[target]]
name = "a"
backend = "rotating"
path = "x.log"

[[target]]
name = "c"
backend = "tape"
`)
		r := runWatcher(t, 10*time.Second, "validate", "--config", cfg)
		wantCode(t, r, 2, "validate")
		for _, want := range []string{"log_level", "max_wait", "needs path", "duplicate name", "max_bytes", `"tape"`} {
			if !strings.Contains(r.Stderr, want) {
				t.Errorf("stderr does not mention %q:\n%s", want, r.Stderr)
			}
		}
	})
	t.Run("compact and run refuse a bad config with 2", func(t *testing.T) {
		dir := t.TempDir()
		cfg := writeConfig(t, dir, "[watcher]\nnope = 1\n")
		for _, cmd := range []string{"compact", "run"} {
			r := runWatcher(t, 20*time.Second, cmd, "--config", cfg)
			wantCode(t, r, 2, cmd)
			if !strings.Contains(r.Stderr, "nope") {
				t.Errorf("%s: stderr does not name the key:\n%s", cmd, r.Stderr)
			}
		}
	})
}

// twoTargets writes a config with two json targets (a: max_records 5, b:
// max_records 3), each holding 10 records, and returns the config path and
// the two file paths.
func twoTargets(t *testing.T, dir string) (cfg, a, b string) {
	t.Helper()
	a = filepath.Join(dir, "data", "a.ndjson")
	b = filepath.Join(dir, "data", "b.ndjson")
	writeFile(t, a, genRecords(0, 10, 1795600000, 20))
	writeFile(t, b, genRecords(100, 10, 1795600000, 20))
	cfg = writeConfig(t, dir, baseConfig+`
[[target]]
name = "alpha"
backend = "json"
path = "data/a.ndjson"
[target.retention]
max_records = 5

[[target]]
name = "beta"
backend = "json"
path = "data/b.ndjson"
[target.retention]
max_records = 3
`)
	return cfg, a, b
}

func TestCompactUnknownTarget(t *testing.T) {
	dir := t.TempDir()
	cfg, a, _ := twoTargets(t, dir)
	before := statID(t, a)
	r := runWatcher(t, 20*time.Second, "compact", "--config", cfg, "--target", "alpha", "--target", "gamma")
	wantCode(t, r, 2, "compact --target gamma")
	if !strings.Contains(r.Stderr, "gamma") {
		t.Errorf("stderr does not name the unknown target:\n%s", r.Stderr)
	}
	if statID(t, a) != before {
		t.Errorf("a usage error changed %s", a)
	}
}

func TestCompactSelectedTarget(t *testing.T) {
	dir := t.TempDir()
	cfg, a, b := twoTargets(t, dir)
	bBefore, _ := os.ReadFile(b)
	r := runWatcher(t, 20*time.Second, "compact", "--config", cfg, "--target", "alpha", "--json")
	wantCode(t, r, 0, "compact --target alpha")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 || reps[0].Target != "alpha" || reps[0].AfterRecords != 5 {
		t.Fatalf("want one report for alpha with 5 records after, got %+v", reps)
	}
	if n := countLines(t, a); n != 5 {
		t.Errorf("alpha holds %d lines, want 5", n)
	}
	if bAfter, _ := os.ReadFile(b); !bytes.Equal(bAfter, bBefore) {
		t.Errorf("beta was not selected but changed")
	}
}

func TestCompactHumanSummary(t *testing.T) {
	dir := t.TempDir()
	cfg, _, _ := twoTargets(t, dir)
	r := runWatcher(t, 20*time.Second, "compact", "--config", cfg)
	wantCode(t, r, 0, "compact")
	for _, want := range []string{"alpha", "beta"} {
		line, ok := findLogLine(r.Stdout, want)
		if !ok {
			t.Errorf("summary does not name target %s:\n%s", want, r.Stdout)
			continue
		}
		if !strings.Contains(line, "json") || !strings.Contains(line, "10") {
			t.Errorf("summary line for %s lacks the backend or record counts: %q", want, line)
		}
	}
	if strings.HasPrefix(strings.TrimSpace(r.Stdout), "[") {
		t.Errorf("without --json the output should not be JSON:\n%s", r.Stdout)
	}
}

func TestCompactDryRun(t *testing.T) {
	dir := t.TempDir()
	cfg, a, b := twoTargets(t, dir)
	// Make mtimes old so that any rewrite would show.
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, p := range []string{a, b} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	aID, bID := statID(t, a), statID(t, b)
	aData, _ := os.ReadFile(a)
	bData, _ := os.ReadFile(b)
	r := runWatcher(t, 20*time.Second, "compact", "--config", cfg, "--dry-run", "--json")
	wantCode(t, r, 0, "compact --dry-run")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 2 {
		t.Fatalf("want 2 reports, got %d", len(reps))
	}
	for _, rep := range reps {
		if !rep.DryRun {
			t.Errorf("%s: dry_run is false", rep.Target)
		}
		if rep.BeforeRecords != 10 || rep.RemovedRecords == 0 {
			t.Errorf("%s: dry run should report what would go: before %d removed %d", rep.Target, rep.BeforeRecords, rep.RemovedRecords)
		}
	}
	if got := statID(t, a); got != aID {
		t.Errorf("dry run changed %s: %+v -> %+v", a, aID, got)
	}
	if got := statID(t, b); got != bID {
		t.Errorf("dry run changed %s: %+v -> %+v", b, bID, got)
	}
	aNow, _ := os.ReadFile(a)
	bNow, _ := os.ReadFile(b)
	if !bytes.Equal(aNow, aData) || !bytes.Equal(bNow, bData) {
		t.Errorf("dry run changed file content")
	}
	wantNoLeftovers(t, filepath.Join(dir, "data"))

	// Human output says it was a dry run.
	r = runWatcher(t, 20*time.Second, "compact", "--config", cfg, "--dry-run")
	wantCode(t, r, 0, "compact --dry-run")
	if !strings.Contains(r.Stdout, "dry run") {
		t.Errorf("human dry-run summary does not say so:\n%s", r.Stdout)
	}
	if got := statID(t, a); got != aID {
		t.Errorf("dry run changed %s", a)
	}
}

func TestCompactFailingTargets(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "data", "good.ndjson")
	writeFile(t, good, genRecords(0, 10, 1795600000, 20))
	// A directory where a file should be.
	if err := os.MkdirAll(filepath.Join(dir, "data", "isdir.ndjson"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A symlink to a real file, without follow_symlinks.
	real := filepath.Join(dir, "data", "real.ndjson")
	realData := genRecords(0, 10, 1795600000, 20)
	writeFile(t, real, realData)
	if err := os.Symlink(real, filepath.Join(dir, "data", "link.ndjson")); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, baseConfig+`
[[target]]
name = "good"
backend = "json"
path = "data/good.ndjson"
[target.retention]
max_records = 4

[[target]]
name = "isdir"
backend = "json"
path = "data/isdir.ndjson"
[target.retention]
max_records = 4

[[target]]
name = "link"
backend = "json"
path = "data/link.ndjson"
[target.retention]
max_records = 4
`)
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 1, "compact with failing targets")
	reps := parseReports(t, r.Stdout)
	byName := map[string]report{}
	for _, rep := range reps {
		byName[rep.Target] = rep
	}
	if len(byName) != 3 {
		t.Fatalf("want a report per target (good, isdir, link), got %+v", reps)
	}
	if rep := byName["good"]; rep.Error != "" || rep.AfterRecords != 4 {
		t.Errorf("good target: error %q after_records %d; one failing target must not stop the others", rep.Error, rep.AfterRecords)
	}
	if n := countLines(t, good); n != 4 {
		t.Errorf("good target holds %d lines, want 4", n)
	}
	if rep := byName["isdir"]; rep.Error == "" || !strings.Contains(rep.Error, "isdir.ndjson") {
		t.Errorf("isdir: error %q should name the path", rep.Error)
	}
	if rep := byName["link"]; rep.Error == "" || !strings.Contains(rep.Error, "symbolic link") || !strings.Contains(rep.Error, "link.ndjson") {
		t.Errorf("link: error %q should say the path is a symbolic link and name it", rep.Error)
	}
	if got, _ := os.ReadFile(real); !bytes.Equal(got, realData) {
		t.Errorf("the symlink's target was changed though the symlink was refused")
	}
	if fi, err := os.Lstat(filepath.Join(dir, "data", "link.ndjson")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced or removed: %v", err)
	}

	// Human output: FAILED with the error.
	r = runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--target", "link")
	wantCode(t, r, 1, "compact --target link")
	if line, ok := findLogLine(r.Stdout, "link"); !ok || !strings.Contains(line, "FAILED") {
		t.Errorf("human summary should say link FAILED:\n%s", r.Stdout)
	}

	// With follow_symlinks the same target compacts the file behind it.
	cfg2 := writeConfig(t, t.TempDir(), baseConfig+fmt.Sprintf(`
[[target]]
name = "link"
backend = "json"
path = %q
follow_symlinks = true
[target.retention]
max_records = 4
`, filepath.Join(dir, "data", "link.ndjson")))
	r = runWatcher(t, 30*time.Second, "compact", "--config", cfg2, "--json")
	wantCode(t, r, 0, "compact with follow_symlinks")
	if n := countLines(t, real); n != 4 {
		t.Errorf("with follow_symlinks the file behind the link holds %d lines, want 4", n)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "data", "link.ndjson")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("follow_symlinks compaction replaced the symlink itself: %v", err)
	}
}
