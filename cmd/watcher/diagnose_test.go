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
