package executor

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/papyra/watcher/backends"
)

// interfaceMetrics are the metric names users have relied on from the start, exactly.
var interfaceMetrics = []string{
	"papyra_compactor_compactions_total",
	"papyra_compactor_compaction_errors_total",
	"papyra_compactor_records_dropped_total",
	"papyra_compactor_bytes_reclaimed_total",
	"papyra_compactor_compaction_duration_seconds",
	"papyra_compactor_triggers_total",
	"papyra_compactor_signals_coalesced_total",
	"papyra_compactor_rate_limited_total",
	"papyra_compactor_target_bytes",
	"papyra_compactor_last_success_timestamp_seconds",
	"papyra_compactor_disk_used_ratio",
	"papyra_compactor_redis_used_memory_ratio",
}

// extensionMetrics are the metrics added to those.
var extensionMetrics = []string{
	"papyra_compactor_target_stuck",
	"papyra_compactor_warnings",
	"papyra_compactor_nats_connected",
	"papyra_compactor_info",
}

// populatedMetrics returns Metrics on which every metric has at least one
// series, so that a gather lists every name the type can export.
func populatedMetrics(t *testing.T) *Metrics {
	t.Helper()
	m := NewMetrics("node-1")
	m.InitTarget("events", backends.KindJSON)
	m.InitTarget("cache", backends.KindRedis)
	m.ObserveReport(backends.Report{Target: "events", Backend: backends.KindJSON, Trigger: "timer",
		BeforeRecords: 10, AfterRecords: 4, RemovedRecords: 6, ReclaimedBytes: backends.Int64(600),
		StartedAt: time.Unix(1_700_000_000, 0), DurationMS: 20})
	m.Triggered("growth")
	m.Coalesced("events")
	m.RateLimited()
	m.SetTargetBytes("events", 4096)
	m.SetStuck("events", false)
	m.SetWarning("", "no_targets_on_disk", true)
	m.SetNATSConnected(true)
	m.SetDiskRatios(func() map[string]float64 { return map[string]float64{"/var/lib/papyra": 0.5} })
	m.SetRedisRatios(func() map[string]float64 { return map[string]float64{"cache": 0.25} })
	m.SetRetentionGauges(func() RetentionGauges {
		one := map[string]float64{"events": 1}
		return RetentionGauges{ReclaimableBytes: one, ReclaimableRecords: one, OldestAgeSeconds: one, MaxAgeSeconds: one}
	})
	return m
}

// gathered returns the families of the registry by name.
func gathered(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// series finds the series of family name whose labels are exactly labels
// (name=value pairs); nil when absent.
func series(t *testing.T, m *Metrics, name string, labels ...string) *dto.Metric {
	t.Helper()
	mf := gathered(t, m)[name]
	if mf == nil {
		return nil
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, s := range mf.GetMetric() {
		if len(s.GetLabel()) != len(want) {
			continue
		}
		for _, lp := range s.GetLabel() {
			if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
				continue next
			}
		}
		return s
	}
	return nil
}

// value returns the counter or gauge value of a series, failing when absent.
func value(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	s := series(t, m, name, labels...)
	if s == nil {
		t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case s.Counter != nil:
		return s.GetCounter().GetValue()
	case s.Gauge != nil:
		return s.GetGauge().GetValue()
	}
	t.Fatalf("series %s%v is neither counter nor gauge", name, labels)
	return 0
}

func TestMetricsObserveReports(t *testing.T) {
	m := NewMetrics("node-1")
	m.InitTarget("events", backends.KindJSON)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rep := func(trigger string, mod func(*backends.Report)) backends.Report {
		r := backends.Report{Target: "events", Backend: backends.KindJSON, Trigger: trigger, StartedAt: t0}
		mod(&r)
		return r
	}
	reports := []backends.Report{
		// Real success: 10 records, 1000 bytes, 1.5 s.
		rep("timer", func(r *backends.Report) {
			r.RemovedRecords, r.ReclaimedBytes, r.DurationMS = 10, backends.Int64(1000), 1500
		}),
		// Real success with unknown reclaimed bytes.
		rep("growth", func(r *backends.Report) {
			r.RemovedRecords, r.DurationMS = 5, 40
			r.StartedAt = t0.Add(time.Hour)
		}),
		// Real success where appends outgrew the reclaimed space.
		rep("growth", func(r *backends.Report) {
			r.RemovedRecords, r.ReclaimedBytes, r.DurationMS = 1, backends.Int64(-300), 10
			r.StartedAt = t0.Add(2 * time.Hour)
		}),
		// Failure: counts, but drops and reclaims nothing and is not a success.
		rep("disk", func(r *backends.Report) {
			r.Error, r.RemovedRecords, r.ReclaimedBytes, r.DurationMS = "boom", 99, backends.Int64(99), 7
			r.StartedAt = t0.Add(3 * time.Hour)
		}),
		// Dry run: counts as dry_run only.
		rep("nats", func(r *backends.Report) {
			r.DryRun, r.RemovedRecords, r.ReclaimedBytes, r.DurationMS = true, 7, backends.Int64(70), 3
			r.StartedAt = t0.Add(4 * time.Hour)
		}),
		// Skipped.
		rep("timer", func(r *backends.Report) {
			r.Skipped = "held by node-2"
			r.StartedAt = t0.Add(5 * time.Hour)
		}),
		// Unknown target: ignored entirely.
		{Target: "ghost", Trigger: "nats", Error: `unknown target: "ghost"`, StartedAt: t0},
	}
	for _, r := range reports {
		m.ObserveReport(r)
	}

	c := func(trigger, result string) float64 {
		return value(t, m, "papyra_compactor_compactions_total",
			"target", "events", "backend", "json", "trigger", trigger, "result", result)
	}
	for _, tc := range []struct {
		trigger, result string
		want            float64
	}{
		{"timer", ResultSuccess, 1}, {"growth", ResultSuccess, 2}, {"disk", ResultFailure, 1},
		{"nats", ResultDryRun, 1}, {"timer", ResultSkipped, 1}, {"manual", ResultSuccess, 0},
	} {
		if got := c(tc.trigger, tc.result); got != tc.want {
			t.Errorf("compactions_total{trigger=%q,result=%q} = %v, want %v", tc.trigger, tc.result, got, tc.want)
		}
	}
	if got := value(t, m, "papyra_compactor_compaction_errors_total", "target", "events"); got != 1 {
		t.Errorf("compaction_errors_total = %v, want 1", got)
	}
	if got := value(t, m, "papyra_compactor_records_dropped_total", "target", "events"); got != 16 {
		t.Errorf("records_dropped_total = %v, want 16", got)
	}
	if got := value(t, m, "papyra_compactor_bytes_reclaimed_total", "target", "events"); got != 1000 {
		t.Errorf("bytes_reclaimed_total = %v, want 1000", got)
	}
	wantEnd := t0.Add(2*time.Hour + 10*time.Millisecond)
	if got := value(t, m, "papyra_compactor_last_success_timestamp_seconds", "target", "events"); got != float64(wantEnd.UnixNano())/1e9 {
		t.Errorf("last_success_timestamp_seconds = %v, want %v", got, float64(wantEnd.UnixNano())/1e9)
	}
	h := series(t, m, "papyra_compactor_compaction_duration_seconds", "target", "events").GetHistogram()
	// Three real successes and one real failure; not the dry run or skip.
	if h.GetSampleCount() != 4 {
		t.Errorf("duration histogram count = %d, want 4", h.GetSampleCount())
	}
	if want := 1.5 + 0.04 + 0.01 + 0.007; h.GetSampleSum() < want-1e-9 || h.GetSampleSum() > want+1e-9 {
		t.Errorf("duration histogram sum = %v, want %v", h.GetSampleSum(), want)
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "papyra_compactor_compaction_errors_total"); err != nil || n != 1 {
		t.Errorf("compaction_errors_total series = %d (err %v), want 1: the unknown target must create none", n, err)
	}
}

func TestMetricsInitTargetStartsAtZero(t *testing.T) {
	m := NewMetrics("n")
	m.InitTarget("events", backends.KindJSON)
	for _, name := range []string{
		"papyra_compactor_compaction_errors_total", "papyra_compactor_records_dropped_total",
		"papyra_compactor_bytes_reclaimed_total", "papyra_compactor_signals_coalesced_total",
		"papyra_compactor_target_stuck",
	} {
		if got := value(t, m, name, "target", "events"); got != 0 {
			t.Errorf("%s = %v, want 0", name, got)
		}
	}
	if got := value(t, m, "papyra_compactor_compactions_total",
		"target", "events", "backend", "json", "trigger", "disk", "result", "failure"); got != 0 {
		t.Errorf("compactions_total failure = %v, want 0", got)
	}
	if got := value(t, m, "papyra_compactor_triggers_total", "kind", "redis_memory"); got != 0 {
		t.Errorf("triggers_total{kind=redis_memory} = %v, want 0", got)
	}
	// No success yet: the timestamp is 0 (the alert rules treat 0 as
	// "never"), present from the start so that rules see every target.
	if s := series(t, m, "papyra_compactor_last_success_timestamp_seconds", "target", "events"); s == nil {
		t.Errorf("last_success_timestamp_seconds absent before the first success")
	} else if got := value(t, m, "papyra_compactor_last_success_timestamp_seconds", "target", "events"); got != 0 {
		t.Errorf("last_success_timestamp_seconds = %v before any success, want 0", got)
	}
	if got := value(t, m, "papyra_compactor_info", "node", "n", "version", "", "revision", ""); got != 1 {
		t.Errorf("info = %v, want 1", got)
	}
	// Idempotent: a reload calling it again keeps the counts.
	m.ObserveReport(backends.Report{Target: "events", Backend: "json", Trigger: "timer", Error: "x"})
	m.InitTarget("events", backends.KindJSON)
	if got := value(t, m, "papyra_compactor_compaction_errors_total", "target", "events"); got != 1 {
		t.Errorf("errors after second InitTarget = %v, want 1", got)
	}
}

func TestMetricsSettersAndForget(t *testing.T) {
	m := NewMetrics("n")
	m.InitTarget("events", backends.KindJSON)
	m.InitTarget("other", backends.KindJSON)

	m.Triggered("growth")
	m.Triggered("growth")
	m.Coalesced("events")
	m.Coalesced("ghost") // unknown: ignored
	m.RateLimited()
	m.SetTargetBytes("events", 123)
	m.SetTargetBytes("ghost", 5)
	m.SetStuck("events", true)
	m.SetWarning("events", "cooldown_exceeds_interval", true)
	m.SetWarning("", "no_nats", true)
	m.SetWarning("", "no_nats", false)
	m.SetLastSuccess("events", time.Unix(1000, 0))

	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"papyra_compactor_triggers_total", []string{"kind", "growth"}, 2},
		{"papyra_compactor_signals_coalesced_total", []string{"target", "events"}, 1},
		{"papyra_compactor_rate_limited_total", nil, 1},
		{"papyra_compactor_target_bytes", []string{"target", "events"}, 123},
		{"papyra_compactor_target_stuck", []string{"target", "events"}, 1},
		{"papyra_compactor_warnings", []string{"target", "events", "kind", "cooldown_exceeds_interval"}, 1},
		{"papyra_compactor_warnings", []string{"target", "", "kind", "no_nats"}, 0},
		{"papyra_compactor_last_success_timestamp_seconds", []string{"target", "events"}, 1000},
	}
	for _, c := range checks {
		if got := value(t, m, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, name := range []string{"papyra_compactor_target_bytes", "papyra_compactor_signals_coalesced_total"} {
		if s := series(t, m, name, "target", "ghost"); s != nil {
			t.Errorf("%s has a series for an unknown target", name)
		}
	}
	// Unknown size removes the series.
	m.SetTargetBytes("events", -1)
	if s := series(t, m, "papyra_compactor_target_bytes", "target", "events"); s != nil {
		t.Errorf("target_bytes still present after an unknown size")
	}

	// NATS: absent until set.
	if _, ok := gathered(t, m)["papyra_compactor_nats_connected"]; ok {
		t.Errorf("nats_connected present before SetNATSConnected")
	}
	m.SetNATSConnected(false)
	if got := value(t, m, "papyra_compactor_nats_connected"); got != 0 {
		t.Errorf("nats_connected = %v, want 0", got)
	}
	m.SetNATSConnected(true)
	if got := value(t, m, "papyra_compactor_nats_connected"); got != 1 {
		t.Errorf("nats_connected = %v, want 1", got)
	}

	// Ratios are read at scrape time.
	ratio := 0.5
	m.SetDiskRatios(func() map[string]float64 { return map[string]float64{"/data": ratio} })
	m.SetRedisRatios(func() map[string]float64 { return map[string]float64{"events": 0.9} })
	if got := value(t, m, "papyra_compactor_disk_used_ratio", "mountpoint", "/data"); got != 0.5 {
		t.Errorf("disk_used_ratio = %v, want 0.5", got)
	}
	ratio = 0.75
	if got := value(t, m, "papyra_compactor_disk_used_ratio", "mountpoint", "/data"); got != 0.75 {
		t.Errorf("disk_used_ratio after change = %v, want 0.75", got)
	}
	if got := value(t, m, "papyra_compactor_redis_used_memory_ratio", "target", "events"); got != 0.9 {
		t.Errorf("redis_used_memory_ratio = %v, want 0.9", got)
	}
	m.SetDiskRatios(nil)
	if _, ok := gathered(t, m)["papyra_compactor_disk_used_ratio"]; ok {
		t.Errorf("disk_used_ratio present after SetDiskRatios(nil)")
	}

	// Forget removes every series of the target, keeps the others, and
	// ignores its late reports.
	m.ObserveReport(backends.Report{Target: "events", Backend: "json", Trigger: "timer", StartedAt: time.Unix(2000, 0)})
	m.ForgetTarget("events")
	m.ObserveReport(backends.Report{Target: "events", Backend: "json", Trigger: "timer", Error: "late"})
	m.SetStuck("events", true)
	for name, mf := range gathered(t, m) {
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "target" && lp.GetValue() == "events" {
					t.Errorf("%s still has a series for the forgotten target: %v", name, s.GetLabel())
				}
			}
		}
	}
	if got := value(t, m, "papyra_compactor_compaction_errors_total", "target", "other"); got != 0 {
		t.Errorf("other target's errors = %v, want 0 (kept)", got)
	}
}

func TestMetricsHandlerExposesEveryName(t *testing.T) {
	m := populatedMetrics(t)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	text := string(body)
	for _, name := range append(append([]string{}, interfaceMetrics...), extensionMetrics...) {
		if !strings.Contains(text, "\n# TYPE "+name+" ") {
			t.Errorf("scrape lacks %s", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if !strings.Contains(text, "\n"+name+" ") {
			t.Errorf("scrape lacks the standard collector metric %s", name)
		}
	}
	if !strings.Contains(text, `papyra_compactor_compactions_total{backend="json",result="success",target="events",trigger="timer"} 1`) {
		t.Errorf("scrape lacks the counted compaction:\n%s", text)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP papyra_compactor_bytes_reclaimed_total Bytes reclaimed by successful real compactions, where measurable (reclaimed_bytes > 0).
# TYPE papyra_compactor_bytes_reclaimed_total counter
papyra_compactor_bytes_reclaimed_total{target="cache"} 0
papyra_compactor_bytes_reclaimed_total{target="events"} 600
`), "papyra_compactor_bytes_reclaimed_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsLint(t *testing.T) {
	m := populatedMetrics(t)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, MetricsNamespace+"_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestMetricsInfoBuildLabels: papyra_compactor_info{node,version,revision}
// is one series, whose version and revision SetBuild sets (the watcher
// passes what `watcher version` prints).
func TestMetricsInfoBuildLabels(t *testing.T) {
	m := NewMetrics("node-1")
	m.SetBuild("v1.2.3", "0123abc")
	if got := value(t, m, "papyra_compactor_info", "node", "node-1", "version", "v1.2.3", "revision", "0123abc"); got != 1 {
		t.Errorf("info = %v, want 1", got)
	}
	if n := len(gathered(t, m)["papyra_compactor_info"].GetMetric()); n != 1 {
		t.Errorf("%d info series, want 1", n)
	}
	m.SetBuild("v1.2.4", "def")
	if n := len(gathered(t, m)["papyra_compactor_info"].GetMetric()); n != 1 {
		t.Errorf("%d info series after a second SetBuild, want 1", n)
	}
	if s := series(t, m, "papyra_compactor_info", "node", "node-1", "version", "v1.2.4", "revision", "def"); s == nil {
		t.Error("SetBuild did not replace the series")
	}
}
