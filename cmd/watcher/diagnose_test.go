package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/policy"
)

func report(target string, before, reclaimed int64) backends.Report {
	r := backends.Report{Target: target, Backend: "json", BeforeBytes: backends.Int64(before),
		AfterBytes: backends.Int64(before - reclaimed), StartedAt: time.Now()}
	r.Finish()
	return r
}

func TestDiagnosisIneffectiveCompactions(t *testing.T) {
	m := executor.NewMetrics("n")
	m.InitTarget("events", "json")
	var logs bytes.Buffer
	g := newDiagnosis(m, slog.New(slog.NewTextHandler(&logs, nil)))
	// Growing, reclaiming < 1 %: the third in a row raises the warning.
	g.observe(report("events", 1000, 5))
	g.observe(report("events", 2000, 5))
	if w := g.warnings("events"); len(w) != 0 {
		t.Fatalf("warned after 2 runs: %q", w)
	}
	g.observe(report("events", 3000, 5))
	w := g.warnings("events")
	if len(w) != 1 || !strings.Contains(w[0], "retention is likely missing or too loose") {
		t.Fatalf("warnings %q", w)
	}
	if v := warningMetric(t, m, "events", warnIneffective); v != 1 {
		t.Fatalf("warnings metric = %v", v)
	}
	g.observe(report("events", 4000, 5)) // still on: logged once only
	if n := strings.Count(logs.String(), "self-diagnosis"); n != 1 {
		t.Fatalf("%d log lines, want 1:\n%s", n, logs.String())
	}
	// A compaction that reclaims clears it.
	g.observe(report("events", 5000, 2500))
	if w := g.warnings("events"); len(w) != 0 {
		t.Fatalf("not cleared: %q", w)
	}
	if v := warningMetric(t, m, "events", warnIneffective); v != 0 {
		t.Fatalf("warnings metric = %v after clearing", v)
	}
	// Failed and dry runs say nothing about effectiveness.
	for range 5 {
		r := report("events", 9000, 0)
		r.DryRun = true
		g.observe(r)
	}
	if w := g.warnings("events"); len(w) != 0 {
		t.Fatalf("dry runs raised %q", w)
	}
}

// warningMetric returns the value of papyra_compactor_warnings for a
// target and kind from a scrape, or -1 when the series is absent.
func warningMetric(t *testing.T, m *executor.Metrics, target, kind string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	prefix := `papyra_compactor_warnings{kind="` + kind + `",target="` + target + `"} `
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// The static signs come from the config, in /status and the metric.
func TestDiagnosisStaticWarningsInStatus(t *testing.T) {
	dir := t.TempDir()
	cfgText := `[watcher]
state_dir = "state"
http_listen = ""
[[target]]
name = "noret"
backend = "json"
path = "a.ndjson"
[[target]]
name = "slowtimer"
backend = "json"
path = "b.ndjson"
[target.retention]
max_age_seconds = 600
[target.triggers.timer]
interval = "1h"
[[target]]
name = "fine"
backend = "json"
path = "c.ndjson"
[target.retention]
max_records = 5
`
	path := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, warnings, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDaemon(cfg, warnings, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	doc := d.status(context.Background())
	got := map[string][]string{}
	for _, ts := range doc.Targets {
		got[ts.Name] = ts.Warnings
	}
	if w := got["noret"]; len(w) != 1 || !strings.Contains(w[0], "no retention") {
		t.Errorf("noret warnings %q", w)
	}
	if w := got["slowtimer"]; len(w) != 1 || !strings.Contains(w[0], "longer than max_age_seconds") {
		t.Errorf("slowtimer warnings %q", w)
	}
	if w := got["fine"]; len(w) != 0 {
		t.Errorf("fine warnings %q", w)
	}
	if v := warningMetric(t, d.metrics, "noret", warnNoRetention); v != 1 {
		t.Errorf("no_retention metric %v", v)
	}
	if v := warningMetric(t, d.metrics, "slowtimer", warnTimerTooSlow); v != 1 {
		t.Errorf("timer metric %v", v)
	}
	if v := warningMetric(t, d.metrics, "fine", warnNoRetention); v > 0 {
		t.Errorf("fine no_retention metric %v", v)
	}
}

// The startup scan estimate reproduces its anchor: Papyra read the 196 MB,
// 1,000,000-record file in 143 s.
func TestStartupScanEstimate(t *testing.T) {
	for _, c := range []struct {
		bytes, records int64
		want           time.Duration
	}{
		{196e6, -1, 143 * time.Second},
		{196e6, 1e6, 143 * time.Second},
		{98e6, -1, 71500 * time.Millisecond},
		{10e6, 2e6, 286 * time.Second}, // short records: the count decides
		{0, -1, 0},
	} {
		got := startupScanEstimate(c.bytes, c.records)
		if d := got - c.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("startupScanEstimate(%d, %d) = %s, want %s", c.bytes, c.records, got, c.want)
		}
	}
}

// diagDaemon starts a daemon (not run) on cfgText, written in a temp dir
// that is also its working directory for relative paths.
func diagDaemon(t *testing.T, cfgText string) (*daemon, string, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("c.toml", []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, warnings, err := LoadConfig("c.toml")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d, err := newDaemon(cfg, warnings, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return d, dir, &logs
}

func targetWarnings(t *testing.T, d *daemon, name string) []string {
	t.Helper()
	for _, ts := range d.status(context.Background()).Targets {
		if ts.Name == name {
			return ts.Warnings
		}
	}
	t.Fatalf("no target %s in /status", name)
	return nil
}

func hasWarning(ws []string, substr string) bool {
	for _, w := range ws {
		if strings.Contains(w, substr) {
			return true
		}
	}
	return false
}

const diagConfig = `[watcher]
state_dir = "state"
http_listen = ""
[[target]]
name = "events"
backend = "json"
path = "events.ndjson"
[target.retention]
max_records = 5
[[target]]
name = "audit"
backend = "rotating"
path = "audit.log"
max_bytes = 1000
max_files = 3
[target.retention]
max_records = 5
`

func TestDiagnosisSlowStartupScan(t *testing.T) {
	d, _, logs := diagDaemon(t, diagConfig)
	// A sparse file: its size is what Papyra would read.
	size := func(n int64) {
		t.Helper()
		f, err := os.OpenFile("events.ndjson", os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(n); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	size(50e6) // 36 s
	if w := targetWarnings(t, d, "events"); len(w) != 0 {
		t.Fatalf("warnings at 50 MB: %q", w)
	}
	size(100e6) // 73 s
	w := targetWarnings(t, d, "events")
	if !hasWarning(w, "startup scan of this target would take about 1m13s (95 MiB;") {
		t.Fatalf("warnings at 100 MB: %q", w)
	}
	if v := warningMetric(t, d.metrics, "events", warnSlowStartup); v != 1 {
		t.Fatalf("metric %v", v)
	}
	size(70e6) // 51 s: above 80 % of 60 s, kept
	if w := targetWarnings(t, d, "events"); !hasWarning(w, "about 51s") {
		t.Fatalf("warnings at 70 MB: %q", w)
	}
	size(60e6) // 44 s: cleared
	if w := targetWarnings(t, d, "events"); len(w) != 0 {
		t.Fatalf("warnings at 60 MB: %q", w)
	}
	if v := warningMetric(t, d.metrics, "events", warnSlowStartup); v != 0 {
		t.Fatalf("metric %v after clearing", v)
	}
	if n := strings.Count(logs.String(), "startup scan"); n != 1 {
		t.Errorf("%d log lines about the startup scan, want 1:\n%s", n, logs.String())
	}

	// The record count a report measured counts too: 10 MB holding
	// 2,000,000 records (5 bytes each) takes Papyra 286 s.
	size(10e6)
	d.diag.observe(backends.Report{Target: "events", Backend: "json", DryRun: true,
		BeforeRecords: 2e6, BeforeBytes: backends.Int64(10e6), StartedAt: time.Now()})
	if w := targetWarnings(t, d, "events"); !hasWarning(w, "about 4m46s (9.5 MiB, ~2,000,000 records;") {
		t.Fatalf("warnings with 2,000,000 records: %q", w)
	}
	// A failed report measures nothing.
	d.diag.observe(backends.Report{Target: "events", Backend: "json", BeforeRecords: 1,
		BeforeBytes: backends.Int64(10e6), AfterBytes: backends.Int64(10e6), Error: "boom", StartedAt: time.Now()})
	if w := targetWarnings(t, d, "events"); !hasWarning(w, "~2,000,000 records") {
		t.Fatalf("a failed report changed the estimate: %q", w)
	}

	// A rotating set is read whole: 3 files of 30 MB.
	for _, p := range []string{"audit.log", "audit.log.1", "audit.log.2"} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 30e6); err != nil {
			t.Fatal(err)
		}
	}
	if w := targetWarnings(t, d, "audit"); !hasWarning(w, "about 1m6s (86 MiB;") {
		t.Fatalf("rotating warnings: %q", w)
	}
}

// replaceFile puts a new file (a new inode) at path, as Papyra's recovery
// or its own compaction does (os.replace).
func replaceFile(t *testing.T, path string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDiagnosisTargetReplaced(t *testing.T) {
	d, _, _ := diagDaemon(t, diagConfig)
	if err := os.WriteFile("events.ndjson", []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	d.diagnoseRuntime(at(0))

	// Three replacements in an hour are tolerated.
	for i := 1; i <= 3; i++ {
		replaceFile(t, "events.ndjson")
		d.diagnoseRuntime(at(10 * i))
	}
	if d.diag.isOn("events", warnReplaced) {
		t.Fatal("warned after 3 replacements")
	}
	// The watcher's own swaps are not counted: a compaction reported
	// between two observations.
	for i := range 3 {
		replaceFile(t, "events.ndjson")
		d.diag.observe(report("events", 100, 50))
		d.diagnoseRuntime(at(31 + i))
	}
	if d.diag.isOn("events", warnReplaced) {
		t.Fatal("the watcher's own compactions counted as replacements")
	}
	// A file deleted, then written again by someone else, is replaced
	// once: the inode it had is kept while it is missing. (Held open, so
	// that the file system cannot give its number to the new file.)
	held, err := os.Open("events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := os.Remove("events.ndjson"); err != nil {
		t.Fatal(err)
	}
	d.diagnoseRuntime(at(40))
	if err := os.WriteFile("events.ndjson", []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.diagnoseRuntime(at(41))
	w := targetWarnings(t, d, "events")
	if !hasWarning(w, "replaced by another process 4 times in the last hour (more than 3)") {
		t.Fatalf("warnings after 4 replacements: %q", w)
	}
	if v := warningMetric(t, d.metrics, "events", warnReplaced); v != 1 {
		t.Fatalf("metric %v", v)
	}
	// An hour after the first, 3 remain in the window: cleared.
	d.diagnoseRuntime(at(70))
	if d.diag.isOn("events", warnReplaced) {
		t.Fatal("not cleared when the first replacement left the window")
	}
	if v := warningMetric(t, d.metrics, "events", warnReplaced); v != 0 {
		t.Fatalf("metric %v after clearing", v)
	}
}

func TestDiagnosisRotationIsNotReplacement(t *testing.T) {
	d, _, _ := diagDaemon(t, diagConfig)
	if err := os.WriteFile("audit.log", []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	d.diagnoseRuntime(t0)
	// The writer rotates: .1 → .2, active → .1, a new active file.
	for i := 1; i <= 6; i++ {
		os.Rename("audit.log.1", "audit.log.2")
		if err := os.Rename("audit.log", "audit.log.1"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("audit.log", []byte("{}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		d.diagnoseRuntime(t0.Add(time.Duration(i) * time.Minute))
	}
	if w := targetWarnings(t, d, "audit"); hasWarning(w, "replaced") {
		t.Fatalf("rotations counted as replacements: %q", w)
	}
	// Replacing the active file is counted.
	for i := 1; i <= 4; i++ {
		replaceFile(t, "audit.log")
		d.diagnoseRuntime(t0.Add(time.Duration(10+i) * time.Minute))
	}
	if w := targetWarnings(t, d, "audit"); !hasWarning(w, "replaced by another process 4 times") {
		t.Fatalf("warnings: %q", w)
	}
}

func TestDiagnosisRedisPressureNotRelieved(t *testing.T) {
	m := executor.NewMetrics("n")
	m.InitTarget("streams", "redis")
	var logs bytes.Buffer
	g := newDiagnosis(m, slog.New(slog.NewTextHandler(&logs, nil)))
	tg := triggerTarget(TargetConfig{Name: "streams", Backend: "redis", URL: "redis://10.0.0.7:6379/0",
		Triggers: defaultTriggers()})
	if tg.RedisMemory.HighPercent != 80 || tg.RedisMemory.LowPercent != 70 || tg.RedisMemory.Interval != 10*time.Second {
		t.Fatalf("defaults changed: %+v (the test assumes 80/70/10s)", tg.RedisMemory)
	}
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	compacted := func(s int, trigger string) {
		r := backends.Report{Target: "streams", Backend: "redis", Trigger: trigger, BeforeRecords: 10,
			AfterRecords: 5, StartedAt: at(s).Add(-time.Second), DurationMS: 1000}
		r.Finish()
		g.observe(r)
	}
	on := func() bool { return g.isOn("streams", warnRedisPressure) }

	// A compaction long before the pressure says nothing about it.
	g.redisObserved(at(0), tg, 0.5, true)
	compacted(5, policy.KindTimer)
	g.redisObserved(at(100), tg, 0.85, true)
	g.redisObserved(at(200), tg, 0.85, true)
	if on() {
		t.Fatal("warned without a compaction during the pressure")
	}
	// The trigger's compaction ends at 205; the ratio is judged from
	// 205 + 2 × 10 s + 10 s on.
	compacted(205, policy.KindRedisMemory)
	g.redisObserved(at(220), tg, 0.85, true)
	if on() {
		t.Fatal("warned before the ratio could have been read after the compaction")
	}
	g.redisObserved(at(236), tg, 0.85, true)
	if !on() {
		t.Fatal("no warning: pressure not relieved by the compaction")
	}
	w := g.warnings("streams")
	if len(w) != 1 || !strings.Contains(w[0], "Redis 10.0.0.7:6379 used memory at 85.0% (high_percent 80%) was not relieved by the compaction") {
		t.Fatalf("warnings %q", w)
	}
	if v := warningMetric(t, m, "streams", warnRedisPressure); v != 1 {
		t.Fatalf("metric %v", v)
	}
	// An unanswered reading changes nothing; between low and high it
	// holds; below low it clears.
	g.redisObserved(at(240), tg, 0, false)
	g.redisObserved(at(250), tg, 0.75, true)
	if !on() {
		t.Fatal("cleared above low_percent")
	}
	g.redisObserved(at(260), tg, 0.65, true)
	if on() {
		t.Fatal("not cleared below low_percent")
	}
	if v := warningMetric(t, m, "streams", warnRedisPressure); v != 0 {
		t.Fatalf("metric %v after clearing", v)
	}
	// A new episode needs a new compaction.
	g.redisObserved(at(300), tg, 0.9, true)
	g.redisObserved(at(400), tg, 0.9, true)
	if on() {
		t.Fatal("the previous episode's compaction counted")
	}
	// A compaction that relieves it: no warning.
	compacted(405, policy.KindRedisMemory)
	g.redisObserved(at(450), tg, 0.6, true)
	if on() {
		t.Fatal("warned although the compaction relieved the pressure")
	}
	// A failed compaction relieves nothing and is not one.
	g.redisObserved(at(500), tg, 0.9, true)
	g.observe(backends.Report{Target: "streams", Backend: "redis", Trigger: policy.KindRedisMemory,
		StartedAt: at(500), Error: "unavailable"})
	g.redisObserved(at(600), tg, 0.9, true)
	if on() {
		t.Fatal("a failed compaction counted")
	}
}
