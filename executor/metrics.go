package executor

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/papyra/watcher/backends"
)

// MetricsNamespace is the prefix of every watcher metric (docs/http-and-metrics.md).
const MetricsNamespace = "papyra_compactor"

// Values of the result label of papyra_compactor_compactions_total.
const (
	// ResultSuccess: a real compaction that completed.
	ResultSuccess = "success"
	// ResultFailure: the report carries an error (also for a dry run that
	// failed); nothing was changed.
	ResultFailure = "failure"
	// ResultSkipped: the compaction did not run (Report.Skipped says why,
	// for example another node holds the target).
	ResultSkipped = "skipped"
	// ResultDryRun: a dry run that completed; nothing was changed.
	ResultDryRun = "dry_run"
)

// triggerKinds are the signal kinds (policy.Kind*, which this package cannot
// import: policy is downstream of executor). papyra_compactor_triggers_total
// is initialised to 0 for each so that rate() works from the first signal.
var triggerKinds = []string{"growth", "disk", "timer", "retention", "redis_memory", "nats", "manual"}

// durationBuckets span 1 ms to 30 min: a small file compacts in
// milliseconds, a throttled rewrite of gigabytes takes minutes.
var durationBuckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
}

// Metrics are the watcher's Prometheus metrics (docs/http-and-metrics.md, prefix
// papyra_compactor_), on a private registry that also holds the Go runtime
// and process collectors. It is safe for concurrent use.
//
// Per-target series are only recorded for targets made known with
// InitTarget: a report or call naming any other target (an unknown name in
// a NATS request, or a target a reload removed, whose late report arrives
// after ForgetTarget) is ignored, so a stray name never creates series.
// Global warnings, which concern no single target, use the target "" and
// are always recorded.
type Metrics struct {
	reg *prometheus.Registry

	compactions   *prometheus.CounterVec   // target, backend, trigger, result
	errors        *prometheus.CounterVec   // target
	dropped       *prometheus.CounterVec   // target
	reclaimed     *prometheus.CounterVec   // target
	duration      *prometheus.HistogramVec // target
	triggers      *prometheus.CounterVec   // kind
	coalesced     *prometheus.CounterVec   // target
	rateLimited   prometheus.Counter
	targetBytes   *prometheus.GaugeVec // target
	lastSuccess   *prometheus.GaugeVec // target
	stuck         *prometheus.GaugeVec // target
	warnings      *prometheus.GaugeVec // target, kind
	natsConnected *prometheus.GaugeVec // no labels: absent until first set
	info          *prometheus.GaugeVec // node, version, revision: one series
	node          string
	disk          *ratioCollector // mountpoint
	redis         *ratioCollector // target
	// The retention gauges, read at scrape time from the retention
	// trigger's estimates.
	reclaimableBytes   *ratioCollector    // target
	reclaimableRecords *ratioCollector    // target
	oldestAge          *ratioCollector    // target
	maxAge             *ratioCollector    // target
	snap               snapshotCollectors // target (metrics_snapshot.go)

	mu    sync.Mutex
	known map[string]bool // targets passed to InitTarget and not forgotten
}

// NewMetrics returns Metrics on a new private registry. node is this node's
// name, exposed as papyra_compactor_info{node="...",version="",revision=""} 1
// (join on instance to put node names on other series); SetBuild fills in
// the version and revision.
func NewMetrics(node string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), known: map[string]bool{}}
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: MetricsNamespace, Name: name, Help: help}, labels)
	}
	gaugeVec := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: MetricsNamespace, Name: name, Help: help}, labels)
	}
	m.compactions = counterVec("compactions_total",
		"Compactions by target, backend, trigger and result (success, failure, skipped, dry_run).",
		"target", "backend", "trigger", "result")
	m.errors = counterVec("compaction_errors_total",
		"Compactions (real or dry run) that ended with an error.", "target")
	m.dropped = counterVec("records_dropped_total",
		"Records removed by successful real compactions (removed_records).", "target")
	m.reclaimed = counterVec("bytes_reclaimed_total",
		"Bytes reclaimed by successful real compactions, where measurable (reclaimed_bytes > 0).", "target")
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: MetricsNamespace, Name: "compaction_duration_seconds",
		Help:    "Duration of real compactions (successful or failed; not dry runs or skips).",
		Buckets: durationBuckets,
	}, []string{"target"})
	m.triggers = counterVec("triggers_total",
		"Signals received from triggers, by kind.", "kind")
	m.coalesced = counterVec("signals_coalesced_total",
		"Signals merged into a compaction that was already pending or running.", "target")
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{Namespace: MetricsNamespace, Name: "rate_limited_total",
		Help: "Compactions delayed by the global rate limit."})
	m.targetBytes = gaugeVec("target_bytes",
		"Stored size of the target in bytes (absent when unknown).", "target")
	m.lastSuccess = gaugeVec("last_success_timestamp_seconds",
		"Unix time at which the last successful real compaction of the target ended.", "target")
	m.stuck = gaugeVec("target_stuck",
		"1 when the target keeps failing or cannot make progress, else 0.", "target")
	m.warnings = gaugeVec("warnings",
		`1 while a self-diagnosed warning of this kind holds, else 0; target="" for warnings about no single target.`,
		"target", "kind")
	m.natsConnected = gaugeVec("nats_connected",
		"1 while connected to NATS, else 0; absent when NATS is not configured.")
	m.disk = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "disk_used_ratio"),
		"Used fraction (0-1) of the filesystems holding file targets, read at scrape time.", "mountpoint")
	m.redis = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "redis_used_memory_ratio"),
		"used_memory / maxmemory (or of system memory) of the Redis server of the target, read at scrape time.", "target")
	m.redis.keep = m.isKnown
	m.reclaimableBytes = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "reclaimable_bytes"),
		"Bytes a compaction with the target's retention would remove now (estimate, refreshed every [triggers.retention] interval).", "target")
	m.reclaimableRecords = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "reclaimable_records"),
		"Records a compaction with the target's retention would remove now (estimate).", "target")
	m.oldestAge = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "oldest_record_age_seconds"),
		"Age of the oldest record on the target's storage, in seconds (0 when it holds none).", "target")
	m.maxAge = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "retention_max_age_seconds"),
		"The target's max_age_seconds; absent for a target without an age limit.", "target")
	for _, c := range []*ratioCollector{m.reclaimableBytes, m.reclaimableRecords, m.oldestAge, m.maxAge} {
		c.keep = m.isKnown
	}
	m.node = node
	m.info = gaugeVec("info", "Constant 1, labelled with this node's name and the watcher's version and revision (the commit it was built from).",
		"node", "version", "revision")
	m.SetBuild("", "")
	for _, k := range triggerKinds {
		m.triggers.WithLabelValues(k)
	}

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.compactions, m.errors, m.dropped, m.reclaimed, m.duration, m.triggers, m.coalesced,
		m.rateLimited, m.targetBytes, m.lastSuccess, m.stuck, m.warnings, m.natsConnected,
		m.disk, m.redis, m.reclaimableBytes, m.reclaimableRecords, m.oldestAge, m.maxAge, m.info,
	)
	return m
}

// Registry returns the private registry holding every metric.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler returns the /metrics handler (Prometheus text and OpenMetrics
// formats) for the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// InitTarget makes target known and sets its counters to 0 (errors, records
// dropped, bytes reclaimed, signals coalesced, the duration histogram,
// compactions_total with result success and failure for every trigger kind)
// and target_stuck to 0, so that rate() and increase() see the first event.
// Call it for every target at start and for every target a reload adds;
// backend is the target's backend kind. It is idempotent.
func (m *Metrics) InitTarget(target, backend string) {
	m.mu.Lock()
	m.known[target] = true
	m.mu.Unlock()
	m.errors.WithLabelValues(target)
	m.dropped.WithLabelValues(target)
	m.reclaimed.WithLabelValues(target)
	m.coalesced.WithLabelValues(target)
	m.duration.WithLabelValues(target)
	m.stuck.WithLabelValues(target).Set(0)
	m.lastSuccess.WithLabelValues(target) // 0 until the first success; kept across reloads
	for _, k := range triggerKinds {
		for _, res := range []string{ResultSuccess, ResultFailure} {
			m.compactions.WithLabelValues(target, backend, k, res)
		}
	}
}

// ForgetTarget deletes every series of target (call it when a reload
// removes the target) and ignores its later reports.
func (m *Metrics) ForgetTarget(target string) {
	m.mu.Lock()
	delete(m.known, target)
	m.mu.Unlock()
	l := prometheus.Labels{"target": target}
	m.compactions.DeletePartialMatch(l)
	m.errors.DeletePartialMatch(l)
	m.dropped.DeletePartialMatch(l)
	m.reclaimed.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
	m.coalesced.DeletePartialMatch(l)
	m.targetBytes.DeletePartialMatch(l)
	m.lastSuccess.DeletePartialMatch(l)
	m.stuck.DeletePartialMatch(l)
	m.warnings.DeletePartialMatch(l)
}

func (m *Metrics) isKnown(target string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.known[target]
}

// Result returns the result label value for r: failure when r.Error is set,
// else skipped when r.Skipped is set, else dry_run for a dry run, else
// success.
func Result(r backends.Report) string {
	switch {
	case r.Error != "":
		return ResultFailure
	case r.Skipped != "":
		return ResultSkipped
	case r.DryRun:
		return ResultDryRun
	default:
		return ResultSuccess
	}
}

// ObserveReport records one compaction report; pass it to
// Executor.Subscribe. Every report counts in compactions_total and failures
// in compaction_errors_total. Only real (not dry-run) compactions count in
// the duration histogram, and only successful real ones in
// records_dropped_total, bytes_reclaimed_total (when reclaimed_bytes is
// known and positive: appends during the compaction can make it negative)
// and last_success_timestamp_seconds (set to the end of the compaction).
func (m *Metrics) ObserveReport(r backends.Report) {
	if !m.isKnown(r.Target) {
		return
	}
	res := Result(r)
	m.compactions.WithLabelValues(r.Target, r.Backend, r.Trigger, res).Inc()
	if res == ResultFailure {
		m.errors.WithLabelValues(r.Target).Inc()
	}
	if r.DryRun || res == ResultSkipped {
		return
	}
	m.duration.WithLabelValues(r.Target).Observe(float64(r.DurationMS) / 1000)
	if res != ResultSuccess {
		return
	}
	if r.RemovedRecords > 0 {
		m.dropped.WithLabelValues(r.Target).Add(float64(r.RemovedRecords))
	}
	if r.ReclaimedBytes != nil && *r.ReclaimedBytes > 0 {
		m.reclaimed.WithLabelValues(r.Target).Add(float64(*r.ReclaimedBytes))
	}
	end := r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
	m.lastSuccess.WithLabelValues(r.Target).Set(float64(end.UnixNano()) / 1e9)
}

// SetLastSuccess sets last_success_timestamp_seconds of target, for a daemon
// that restores the time of the last success from its state at start.
func (m *Metrics) SetLastSuccess(target string, t time.Time) {
	if !m.isKnown(target) || t.IsZero() {
		return
	}
	m.lastSuccess.WithLabelValues(target).Set(float64(t.UnixNano()) / 1e9)
}

// Triggered counts one signal of the given kind (policy.Kind*).
func (m *Metrics) Triggered(kind string) { m.triggers.WithLabelValues(kind).Inc() }

// Coalesced counts one signal for target merged into pending or running
// work.
func (m *Metrics) Coalesced(target string) {
	if m.isKnown(target) {
		m.coalesced.WithLabelValues(target).Inc()
	}
}

// RateLimited counts one compaction delayed by the global rate limit.
func (m *Metrics) RateLimited() { m.rateLimited.Inc() }

// SetStuck sets target_stuck of target to 1 or 0.
func (m *Metrics) SetStuck(target string, stuck bool) {
	if m.isKnown(target) {
		m.stuck.WithLabelValues(target).Set(b2f(stuck))
	}
}

// SetTargetBytes sets target_bytes of target; a negative n (unknown size)
// removes the series.
func (m *Metrics) SetTargetBytes(target string, n int64) {
	if !m.isKnown(target) {
		return
	}
	if n < 0 {
		m.targetBytes.DeleteLabelValues(target)
		return
	}
	m.targetBytes.WithLabelValues(target).Set(float64(n))
}

// SetWarning sets warnings{target,kind} to 1 (on) or 0. kind is a short
// stable identifier of the warning (for example "cooldown_exceeds_interval");
// target is "" for a warning that concerns no single target.
func (m *Metrics) SetWarning(target, kind string, on bool) {
	if target != "" && !m.isKnown(target) {
		return
	}
	m.warnings.WithLabelValues(target, kind).Set(b2f(on))
}

// SetBuild sets the version and revision labels of
// papyra_compactor_info{node,version,revision} 1, replacing its one
// series. NewMetrics leaves them empty.
func (m *Metrics) SetBuild(version, revision string) {
	m.info.Reset()
	m.info.WithLabelValues(m.node, version, revision).Set(1)
}

// SetNATSConnected sets nats_connected to 1 or 0. The series is absent
// until the first call, so a watcher without NATS does not report it.
func (m *Metrics) SetNATSConnected(connected bool) {
	m.natsConnected.WithLabelValues().Set(b2f(connected))
}

// SetDiskRatios sets the function read at every scrape for
// disk_used_ratio: it returns mountpoint → used fraction (0 to 1). nil
// removes the series. fn must be fast (return cached values) and safe for
// concurrent use.
func (m *Metrics) SetDiskRatios(fn func() map[string]float64) { m.disk.set(fn) }

// SetRedisRatios sets the function read at every scrape for
// redis_used_memory_ratio: it returns target → used fraction (0 to 1);
// targets not known through InitTarget are left out. nil removes the series. fn must be fast and safe for concurrent use.
func (m *Metrics) SetRedisRatios(fn func() map[string]float64) { m.redis.set(fn) }

// RetentionGauges are the values of the retention gauges, by target.
type RetentionGauges struct {
	ReclaimableBytes, ReclaimableRecords, OldestAgeSeconds, MaxAgeSeconds map[string]float64
}

// SetRetentionGauges sets the function read at every scrape for
// reclaimable_bytes, reclaimable_records, oldest_record_age_seconds and
// retention_max_age_seconds. fn must be fast and safe for concurrent use.
func (m *Metrics) SetRetentionGauges(fn func() RetentionGauges) {
	m.reclaimableBytes.set(func() map[string]float64 { return fn().ReclaimableBytes })
	m.reclaimableRecords.set(func() map[string]float64 { return fn().ReclaimableRecords })
	m.oldestAge.set(func() map[string]float64 { return fn().OldestAgeSeconds })
	m.maxAge.set(func() map[string]float64 { return fn().MaxAgeSeconds })
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ratioCollector exposes a gauge with one label whose values a function
// returns at scrape time.
type ratioCollector struct {
	desc *prometheus.Desc
	keep func(string) bool // nil keeps every label value
	mu   sync.Mutex
	fn   func() map[string]float64
}

func newRatioCollector(fqName, help, label string) *ratioCollector {
	return &ratioCollector{desc: prometheus.NewDesc(fqName, help, []string{label}, nil)}
}

func (c *ratioCollector) set(fn func() map[string]float64) {
	c.mu.Lock()
	c.fn = fn
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *ratioCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *ratioCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn == nil {
		return
	}
	for k, v := range fn() {
		if c.keep != nil && !c.keep(k) {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, k)
	}
}
