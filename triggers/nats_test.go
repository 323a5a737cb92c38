package triggers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testlog"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
)

// fakePolicy stands in for the policy engine: it records the Signals it is
// given and answers each with one synthetic report per target.
type fakePolicy struct {
	signals chan policy.Signal

	mu     sync.Mutex
	report func(sig policy.Signal, target string) backends.Report
	hold   chan struct{} // when set, replies wait until it is closed
	silent bool          // never reply
}

func newFakePolicy() *fakePolicy {
	return &fakePolicy{signals: make(chan policy.Signal, 64)}
}

func (f *fakePolicy) emit(sig policy.Signal) {
	f.signals <- sig
	f.mu.Lock()
	report, hold, silent := f.report, f.hold, f.silent
	f.mu.Unlock()
	if silent {
		return
	}
	go func() {
		if hold != nil {
			<-hold
		}
		for _, name := range sig.Targets {
			var r backends.Report
			if report != nil {
				r = report(sig, name)
			} else {
				r = okReport(sig, name)
			}
			sig.Reply(r)
		}
	}()
}

// next returns the next signal emitted.
func (f *fakePolicy) next(t *testing.T) policy.Signal {
	t.Helper()
	select {
	case s := <-f.signals:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no signal emitted within 10s")
		return policy.Signal{}
	}
}

// none fails if a signal was emitted.
func (f *fakePolicy) none(t *testing.T) {
	t.Helper()
	select {
	case s := <-f.signals:
		t.Fatalf("unexpected signal emitted: %+v", s)
	default:
	}
}

func okReport(sig policy.Signal, target string) backends.Report {
	r := backends.Report{
		Target:        target,
		Backend:       backends.KindJSON,
		Trigger:       sig.Kind,
		BeforeRecords: 10,
		AfterRecords:  4,
		BeforeBytes:   backends.Int64(10000),
		AfterBytes:    backends.Int64(4000),
		StartedAt:     time.Now().UTC(),
		DurationMS:    12,
		DryRun:        sig.DryRun,
	}
	r.Finish()
	return r
}

func uniquePrefix(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "papyra.test." + hex.EncodeToString(b)
}

func fileTarget(name string) Target {
	return Target{Name: name, Backend: backends.KindJSON, Files: []string{"/data/" + name + ".ndjson"}}
}

func redisTarget(name string) Target {
	return Target{Name: name, Backend: backends.KindRedis, RedisURL: "redis://127.0.0.1:6379/0"}
}

type nodeOpts struct {
	cfg      NATSConfig
	logs     *testlog.Buffer
	noWait   bool          // do not wait until connected and subscribed
	logEvery time.Duration // when set, replaces natsRefusalLogEvery
}

// startNode runs a NATS trigger for targets against url until the test ends.
func startNode(t *testing.T, url string, cfg NATSConfig, targets []Target, f *fakePolicy) *NATS {
	return startNodeOpts(t, url, nodeOpts{cfg: cfg}, targets, f)
}

func startNodeOpts(t *testing.T, url string, o nodeOpts, targets []Target, f *fakePolicy) *NATS {
	t.Helper()
	cfg := o.cfg
	cfg.URL = url
	if cfg.Node == "" {
		cfg.Node = "node-1"
	}
	if cfg.ReconnectWait == 0 {
		cfg.ReconnectWait, cfg.ReconnectMaxWait = 20*time.Millisecond, 100*time.Millisecond
	}
	logger := slog.New(slog.DiscardHandler)
	if o.logs != nil {
		logger = slog.New(slog.NewTextHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	n, err := NewNATS(cfg, targets, logger)
	if err != nil {
		t.Fatalf("NewNATS: %v", err)
	}
	if o.logEvery > 0 {
		n.refusals = newLogLimiter(n.logger, o.logEvery)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, f.emit) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return within 15s of cancel")
		}
	})
	if !o.noWait {
		waitServing(t, n)
	}
	return n
}

// waitServing waits until n is connected and its subscriptions are known
// to the server.
func waitServing(t *testing.T, n *NATS) {
	t.Helper()
	select {
	case <-n.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not subscribe within 10s")
	}
	waitState(t, n, "connected", func(c bool, _ string) bool { return c })
	n.mu.RLock()
	nc := n.nc
	n.mu.RUnlock()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// waitState waits, without polling, until n's state satisfies ok.
func waitState(t *testing.T, n *NATS, what string, ok func(connected bool, detail string) bool) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c, d, changed := n.state.get()
		if ok(c, d) {
			return d
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("state not %s within 10s; last: connected=%v %q", what, c, d)
		}
	}
}

func clientConn(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("client connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func request(t *testing.T, nc *nats.Conn, subject, body string, expect int) []NATSReply {
	t.Helper()
	replies, err := SendRequest(context.Background(), nc, subject, []byte(body), expect, 10*time.Second)
	if err != nil {
		t.Fatalf("SendRequest %s %s: %v", subject, body, err)
	}
	return replies
}

func one(t *testing.T, replies []NATSReply) NATSReply {
	t.Helper()
	if len(replies) != 1 {
		t.Fatalf("got %d replies, want 1: %+v", len(replies), replies)
	}
	return replies[0]
}

func reportTargets(rs []backends.Report) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Target)
	}
	return out
}

func TestNATSPreBackupReply(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events"), fileTarget("audits")}, f)
	nc := clientConn(t, srv.URL)

	r := one(t, request(t, nc, prefix+".pre-backup", `{"targets":["events"],"reason":"nightly"}`, 1))
	if !r.OK || r.Error != "" || r.Node != "node-1" || r.Request != "pre-backup" {
		t.Fatalf("reply = %+v", r)
	}
	if got := reportTargets(r.Reports); !slices.Equal(got, []string{"events"}) {
		t.Fatalf("reports for %v, want [events]", got)
	}
	rep := r.Reports[0]
	if rep.RemovedRecords != 6 || rep.ReclaimedBytes == nil || *rep.ReclaimedBytes != 6000 || rep.Trigger != policy.KindNATS {
		t.Fatalf("report = %+v", rep)
	}
	if r.Anomalies == nil || len(r.Anomalies) != 0 {
		t.Fatalf("anomalies = %#v, want empty list", r.Anomalies)
	}
	sig := f.next(t)
	if sig.Kind != policy.KindNATS || !sig.Urgent || sig.Scan || sig.DryRun ||
		sig.Reason != "nats pre-backup: nightly" || !slices.Equal(sig.Targets, []string{"events"}) || sig.At.IsZero() {
		t.Fatalf("signal = %+v", sig)
	}

	// No targets: every target of the node, in config order.
	r = one(t, request(t, nc, prefix+".pre-backup", ``, 1))
	if got := reportTargets(r.Reports); !r.OK || !slices.Equal(got, []string{"events", "audits"}) {
		t.Fatalf("empty body: ok=%v reports %v", r.OK, got)
	}
	if sig := f.next(t); sig.Reason != "nats pre-backup" {
		t.Fatalf("reason without request reason = %q", sig.Reason)
	}
	r = one(t, request(t, nc, prefix+".compact", `{}`, 1))
	if got := reportTargets(r.Reports); !r.OK || r.Request != "compact" || len(got) != 2 {
		t.Fatalf("{} body: %+v", r)
	}
	f.next(t)
}

func TestNATSPreMigrationAnomalies(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.report = func(sig policy.Signal, target string) backends.Report {
		r := okReport(sig, target)
		if !sig.Scan {
			return r
		}
		switch target {
		case "events":
			r.Anomalies = []backends.Anomaly{
				{Target: target, Type: backends.AnomalyPartialLine, Path: "/data/events.ndjson", Detail: "line 7"},
				{Target: target, Type: backends.AnomalyInvalidLine, Path: "/data/events.ndjson", Detail: "line 9"},
			}
		case "audits":
			r.Anomalies = []backends.Anomaly{{Target: target, Type: backends.AnomalyLeftover, Path: "/data/audits.ndjson.tmp"}}
		}
		return r
	}
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events"), fileTarget("audits"), fileTarget("clean")}, f)
	nc := clientConn(t, srv.URL)

	r := one(t, request(t, nc, prefix+".pre-migration", `{"targets":["events","audits","clean"]}`, 1))
	if sig := f.next(t); !sig.Scan {
		t.Fatalf("pre-migration signal without Scan: %+v", sig)
	}
	if r.OK || !strings.Contains(r.Error, "3 anomalies remain") {
		t.Fatalf("ok=%v error=%q, want not ok with 3 anomalies", r.OK, r.Error)
	}
	if len(r.Anomalies) != 3 || r.Anomalies[0].Detail != "line 7" || r.Anomalies[2].Target != "audits" {
		t.Fatalf("anomalies = %+v", r.Anomalies)
	}

	// A clean target passes.
	r = one(t, request(t, nc, prefix+".pre-migration", `{"targets":["clean"]}`, 1))
	f.next(t)
	if !r.OK || len(r.Anomalies) != 0 {
		t.Fatalf("clean pre-migration: %+v", r)
	}

	// A failed compaction makes the reply not ok; a skipped one does not.
	f.mu.Lock()
	f.report = func(sig policy.Signal, target string) backends.Report {
		r := okReport(sig, target)
		switch target {
		case "events":
			r.Error = "disk full"
		case "audits":
			r.Skipped = "held by node-2"
		}
		return r
	}
	f.mu.Unlock()
	r = one(t, request(t, nc, prefix+".pre-backup", `{"targets":["audits"]}`, 1))
	f.next(t)
	if !r.OK || r.Reports[0].Skipped != "held by node-2" {
		t.Fatalf("skipped report: %+v", r)
	}
	r = one(t, request(t, nc, prefix+".pre-backup", `{"targets":["events","audits"]}`, 1))
	f.next(t)
	if r.OK || r.Error != "1 of 2 targets failed" || r.Reports[0].Error != "disk full" {
		t.Fatalf("failed report: %+v", r)
	}
}

func TestNATSRefusesBadRequests(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	n := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, MaxBodyBytes: 256}, []Target{fileTarget("events"), redisTarget("streams")}, f)
	nc := clientConn(t, srv.URL)

	cases := []struct {
		name, body, want string
	}{
		{"unknown", `{"targets":["nope"]}`, `unknown target "nope" (not configured on node node-1)`},
		{"unknown among known", `{"targets":["events","nope","nada"]}`, `unknown targets "nope", "nada"`},
		{"path", `{"targets":["../events"]}`, "never by a path"},
		{"absolute path", `{"targets":["/data/events.ndjson"]}`, "never by a path"},
		{"backslash", `{"targets":["a\\b"]}`, "never by a path"},
		{"empty name", `{"targets":[""]}`, "empty target name"},
		{"control char", `{"targets":["ev\u0000"]}`, "control character"},
		{"oversized", `{"reason":"` + strings.Repeat("x", 300) + `"}`, "more than the limit of 256"},
		{"not json", `compact please`, "invalid request body"},
		{"unknown field", `{"target":["events"]}`, `unknown field "target"`},
		{"wrong type", `{"targets":"events"}`, "invalid request body"},
		{"trailing data", `{"targets":["events"]} {}`, "data after the JSON object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, subject := range []string{prefix + ".compact", prefix + ".node.node-1.pre-backup"} {
				r := one(t, request(t, nc, subject, tc.body, 1))
				if r.OK || !strings.Contains(r.Error, tc.want) || !strings.Contains(r.Error, "nothing compacted") || len(r.Reports) != 0 {
					t.Fatalf("%s: reply %+v, want ok:false with %q", subject, r, tc.want)
				}
				f.none(t)
			}
		})
	}
	r := one(t, request(t, nc, prefix+".compact", `{"targets":["nope"]}`, 0))
	if !slices.Equal(r.UnknownTargets, []string{"nope"}) {
		t.Fatalf("unknown_targets = %v", r.UnknownTargets)
	}
	// The queue handler stays silent on refusals: the one reply above was
	// the node-local one (the grace after it let any second reply in).
	// A valid request still works afterwards, and its signal is the first.
	r = one(t, request(t, nc, prefix+".node.node-1.compact", `{"targets":["events"]}`, 1))
	if !r.OK || f.next(t).Targets[0] != "events" {
		t.Fatalf("valid request after refusals: %+v", r)
	}
	_ = n
}

// TestNATSRefusalFloodLogsBounded: a flood of bad requests logs one WARN
// line per kind of refusal, and the count of the others when the interval
// ends (here: when flushed), instead of one line per request.
func TestNATSRefusalFloodLogsBounded(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	logs := &testlog.Buffer{}
	n := startNodeOpts(t, srv.URL, nodeOpts{cfg: NATSConfig{SubjectPrefix: prefix}, logs: logs, logEvery: time.Hour},
		[]Target{fileTarget("events")}, f)
	nc := clientConn(t, srv.URL)
	const invalid, unknown = 2000, 1000
	for i := range invalid + unknown {
		body := fmt.Sprintf(`compact %d please`, i)
		if i%3 == 2 {
			body = fmt.Sprintf(`{"targets":["nope-%d"]}`, i)
		}
		if err := nc.Publish(prefix+".compact", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// One subscription handles its messages in order: once this request is
	// answered, the flood has been handled.
	if r := one(t, request(t, nc, prefix+".compact", `{"targets":["events"]}`, 1)); !r.OK {
		t.Fatalf("valid request after the flood: %+v", r)
	}
	f.next(t)
	got := lines(logs, "nats request refused")
	if len(got) != 2 || !strings.Contains(strings.Join(got, "\n"), "reason=\"invalid request\"") ||
		!strings.Contains(strings.Join(got, "\n"), "reason=\"unknown target\"") {
		t.Fatalf("%d refusal lines for %d bad requests, want one per reason: %q", len(got), invalid+unknown, got)
	}
	n.refusals.Flush()
	got = lines(logs, "nats request refused")
	want := map[string]int{"invalid request": invalid - 1, "unknown target": unknown - 1}
	for _, line := range got[2:] {
		for reason, n := range want {
			if strings.Contains(line, fmt.Sprintf("reason=%q", reason)) &&
				strings.Contains(line, fmt.Sprintf("(%d similar suppressed in the last", n)) && suppressedIn(t, line) == n {
				delete(want, reason)
			}
		}
	}
	if len(got) != 4 || len(want) != 0 {
		t.Fatalf("after the interval: %q; no line for %v", got, want)
	}
}

func TestNATSParseRequest(t *testing.T) {
	req, err := parseRequest([]byte(` {"targets":["a","b","a"],"reason":"r","dry_run":true} `), 1024)
	if err != nil || !slices.Equal(req.Targets, []string{"a", "b"}) || req.Reason != "r" || !req.DryRun {
		t.Fatalf("parseRequest = %+v, %v", req, err)
	}
	for _, body := range []string{"", "  \n", "null", `{"targets":[]}`} {
		req, err := parseRequest([]byte(body), 1024)
		if err != nil || len(req.Targets) != 0 {
			t.Fatalf("parseRequest(%q) = %+v, %v; want every target", body, req, err)
		}
	}
	if _, err := parseRequest([]byte(`{"targets":["x.."]}`), 1024); err == nil {
		t.Fatal(`".." accepted in a name`)
	}
}

func TestNATSDryRunPassedThrough(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events")}, f)
	nc := clientConn(t, srv.URL)
	r := one(t, request(t, nc, prefix+".compact", `{"dry_run":true}`, 1))
	if sig := f.next(t); !sig.DryRun || sig.Scan {
		t.Fatalf("signal = %+v, want DryRun", sig)
	}
	if !r.OK || !r.Reports[0].DryRun {
		t.Fatalf("reply = %+v, want a dry-run report", r)
	}
	one(t, request(t, nc, prefix+".compact", `{"dry_run":false}`, 1))
	if sig := f.next(t); sig.DryRun {
		t.Fatal("dry_run false became DryRun")
	}
}

func TestNATSReplyWaitsForReports(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.hold = make(chan struct{})
	f.report = func(sig policy.Signal, target string) backends.Report {
		r := okReport(sig, target)
		r.Notes = []string{"finished after the hold"}
		return r
	}
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("a"), fileTarget("b")}, f)
	nc := clientConn(t, srv.URL)

	got := make(chan []NATSReply, 1)
	go func() {
		replies, _ := SendRequest(context.Background(), nc, prefix+".pre-backup", nil, 1, 10*time.Second)
		got <- replies
	}()
	f.next(t) // the handler now waits for the two reports
	select {
	case r := <-got:
		t.Fatalf("replied before the reports came: %+v", r)
	default:
	}
	close(f.hold)
	r := one(t, <-got)
	if !r.OK || len(r.Reports) != 2 {
		t.Fatalf("reply = %+v", r)
	}
	for _, rep := range r.Reports {
		if len(rep.Notes) != 1 || rep.Error != "" {
			t.Fatalf("report %+v is not the one the policy sent", rep)
		}
	}
}

func TestNATSRequestTimeoutReportsMissing(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.report = func(sig policy.Signal, target string) backends.Report {
		return okReport(sig, target)
	}
	// Only "a" is answered; "b" never is.
	f.report = nil
	f.silent = true
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, RequestTimeout: 300 * time.Millisecond}, []Target{fileTarget("a"), fileTarget("b")}, f)
	nc := clientConn(t, srv.URL)
	done := make(chan NATSReply, 1)
	go func() {
		replies, err := SendRequest(context.Background(), nc, prefix+".compact", nil, 1, 10*time.Second)
		if err != nil {
			t.Errorf("SendRequest: %v", err)
		}
		done <- one(t, replies)
	}()
	sig := f.next(t)
	sig.Reply(okReport(sig, "a"))
	sig.Reply(okReport(sig, "a"))         // a duplicate is ignored
	sig.Reply(okReport(sig, "elsewhere")) // so is a target not asked for
	r := <-done
	if r.OK || len(r.Reports) != 2 || r.Reports[0].Error != "" ||
		!strings.Contains(r.Reports[1].Error, "no report within 300ms") || r.Error != "1 of 2 targets failed" {
		t.Fatalf("reply = %+v", r)
	}
}

func TestNATSStopRepliesInFlight(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.silent = true
	prefix := uniquePrefix(t)
	n, err := NewNATS(NATSConfig{URL: srv.URL, SubjectPrefix: prefix, Node: "n1"}, []Target{fileTarget("a")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- n.Run(ctx, f.emit) }()
	waitServing(t, n)
	nc := clientConn(t, srv.URL)
	got := make(chan []NATSReply, 1)
	go func() {
		replies, _ := SendRequest(context.Background(), nc, prefix+".compact", nil, 1, 10*time.Second)
		got <- replies
	}()
	f.next(t)
	cancel()
	r := one(t, <-got)
	if r.OK || !strings.Contains(r.Reports[0].Error, "watcher stopped") {
		t.Fatalf("reply on stop = %+v", r)
	}
	if err := <-runDone; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if c, d := n.State(); c || !strings.Contains(d, "closed") {
		t.Fatalf("state after stop = %v %q", c, d)
	}
}

func TestNATSBusyRefusal(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.hold = make(chan struct{})
	defer close(f.hold)
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, MaxRequests: 1}, []Target{fileTarget("a")}, f)
	nc := clientConn(t, srv.URL)
	go func() { _, _ = SendRequest(context.Background(), nc, prefix+".compact", nil, 1, 10*time.Second) }()
	f.next(t) // the only slot is taken
	// On another endpoint (one endpoint answers its requests in turn).
	r := one(t, request(t, nc, prefix+".node.node-1.compact", ``, 1))
	if r.OK || !strings.Contains(r.Error, "node busy") {
		t.Fatalf("reply = %+v, want busy", r)
	}
	f.none(t)
}

func TestNATSFleetFileTargetsEveryNodeAnswers(t *testing.T) {
	srv := testutil.StartNATS(t)
	f1, f2 := newFakePolicy(), newFakePolicy()
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-1"}, []Target{fileTarget("events")}, f1)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-2"}, []Target{fileTarget("events")}, f2)
	nc := clientConn(t, srv.URL)
	replies := request(t, nc, prefix+".pre-backup", `{"targets":["events"]}`, 2)
	var nodes []string
	for _, r := range replies {
		if !r.OK || len(r.Reports) != 1 || r.Reports[0].Node != r.Node {
			t.Fatalf("reply = %+v", r)
		}
		nodes = append(nodes, r.Node)
	}
	slices.Sort(nodes)
	if !slices.Equal(nodes, []string{"node-1", "node-2"}) {
		t.Fatalf("replies from %v", nodes)
	}
	f1.next(t)
	f2.next(t)
}

func TestNATSFleetSharedRedisOneAnswer(t *testing.T) {
	srv := testutil.StartNATS(t)
	f1, f2 := newFakePolicy(), newFakePolicy()
	prefix := uniquePrefix(t)
	targets := []Target{fileTarget("events"), redisTarget("streams")}
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-1"}, targets, f1)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-2"}, targets, f2)
	nc := clientConn(t, srv.URL)

	// Only the redis target: one reply (from one queue member), a short
	// wait shows no second one comes.
	for i := 0; i < 3; i++ {
		replies, err := SendRequest(context.Background(), nc, prefix+".compact", []byte(`{"targets":["streams"]}`), 2, 300*time.Millisecond)
		if !errors.Is(err, ErrMissingReplies) || !strings.Contains(err.Error(), "1 of 2") {
			t.Fatalf("err = %v, want 1 of 2 replies", err)
		}
		r := one(t, replies)
		if !r.OK || !slices.Equal(reportTargets(r.Reports), []string{"streams"}) {
			t.Fatalf("reply = %+v", r)
		}
	}
	if got := len(f1.signals) + len(f2.signals); got != 3 {
		t.Fatalf("%d signals for 3 requests of a shared target", got)
	}

	// Every target: each node answers for its file target, one for redis.
	replies := request(t, nc, prefix+".compact", ``, 3)
	var local, shared int
	for _, r := range replies {
		switch got := reportTargets(r.Reports); {
		case slices.Equal(got, []string{"events"}):
			local++
		case slices.Equal(got, []string{"streams"}):
			shared++
		default:
			t.Fatalf("reply for %v", got)
		}
	}
	if local != 2 || shared != 1 {
		t.Fatalf("%d local and %d shared replies, want 2 and 1", local, shared)
	}
}

func TestNATSQueueGroupFollowsSharedTargets(t *testing.T) {
	a := queueGroup([]Target{redisTarget("x"), redisTarget("y")})
	b := queueGroup([]Target{redisTarget("y"), redisTarget("x")})
	c := queueGroup([]Target{redisTarget("x")})
	if a != b || a == c || !strings.HasPrefix(a, SharedQueueGroup+".") || queueGroup(nil) != "" {
		t.Fatalf("queue groups %q %q %q", a, b, c)
	}

	// A redis target added by a reload is answered for.
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	n := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events")}, f)
	nc := clientConn(t, srv.URL)
	r := one(t, request(t, nc, prefix+".compact", `{"targets":["streams"]}`, 1))
	if r.OK || !slices.Equal(r.UnknownTargets, []string{"streams"}) {
		t.Fatalf("before reload: %+v", r)
	}
	n.SetTargets([]Target{fileTarget("events"), redisTarget("streams")})
	n.mu.RLock()
	_ = n.nc.Flush()
	n.mu.RUnlock()
	r = one(t, request(t, nc, prefix+".compact", `{"targets":["streams"]}`, 1))
	if !r.OK || !slices.Equal(reportTargets(r.Reports), []string{"streams"}) {
		t.Fatalf("after reload: %+v", r)
	}
}

func TestNATSNodeScopedSubject(t *testing.T) {
	srv := testutil.StartNATS(t)
	f1, f2 := newFakePolicy(), newFakePolicy()
	prefix := uniquePrefix(t)
	targets := []Target{fileTarget("events"), redisTarget("streams")}
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-1"}, targets, f1)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-2"}, targets, f2)
	nc := clientConn(t, srv.URL)

	// Without expect SendRequest waits a grace after the first reply: a
	// reply from node-1 would be seen.
	r := one(t, request(t, nc, NATSSubject(prefix, "node-2", VerbPreBackup), ``, 0))
	if r.Node != "node-2" || !r.OK || !slices.Equal(reportTargets(r.Reports), []string{"events", "streams"}) {
		t.Fatalf("reply = %+v", r)
	}
	if sig := f2.next(t); len(sig.Targets) != 2 {
		t.Fatalf("signal = %+v", sig)
	}
	f1.none(t)

	r = one(t, request(t, nc, NATSSubject(prefix, "node-1", VerbCompact), `{"targets":["streams"]}`, 0))
	if r.Node != "node-1" || !slices.Equal(reportTargets(r.Reports), []string{"streams"}) {
		t.Fatalf("reply = %+v", r)
	}
	f1.next(t)
	f2.none(t)

	// A node with no targets at all still answers on its own subject.
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "empty"}, nil, newFakePolicy())
	r = one(t, request(t, nc, NATSSubject(prefix, "empty", VerbCompact), ``, 1))
	if !r.OK || len(r.Reports) != 0 {
		t.Fatalf("empty node reply = %+v", r)
	}
}

func TestNATSSendRequestErrors(t *testing.T) {
	srv := testutil.StartNATS(t)
	nc := clientConn(t, srv.URL)
	prefix := uniquePrefix(t)
	_, err := SendRequest(context.Background(), nc, prefix+".compact", nil, 1, 5*time.Second)
	if !errors.Is(err, ErrNoResponders) {
		t.Fatalf("nobody listening: err = %v, want ErrNoResponders", err)
	}
	// A listener that never answers.
	sub, err := nc.Subscribe(prefix+".pre-backup", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_, err = SendRequest(context.Background(), nc, prefix+".pre-backup", nil, 0, 200*time.Millisecond)
	if !errors.Is(err, ErrNoReply) || err.Error() != "no reply within 200ms from "+prefix+".pre-backup" {
		t.Fatalf("silent listener: err = %v", err)
	}
	// A reply that is not JSON is reported, not dropped.
	sub2, err := nc.Subscribe(prefix+".pre-migration", func(m *nats.Msg) { _ = m.Respond([]byte("garbage")) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Unsubscribe()
	replies, err := SendRequest(context.Background(), nc, prefix+".pre-migration", nil, 1, 5*time.Second)
	if err != nil || len(replies) != 1 || replies[0].OK || !strings.Contains(replies[0].Error, "invalid reply") {
		t.Fatalf("garbage reply: %+v, %v", replies, err)
	}
}

func TestNATSReconnectAfterServerRestart(t *testing.T) {
	srv := testutil.StartNATS(t)
	srv.Shutdown() // down at start: Run must not fail
	f := newFakePolicy()
	logs := &testlog.Buffer{}
	prefix := uniquePrefix(t)
	n := startNodeOpts(t, srv.URL, nodeOpts{cfg: NATSConfig{SubjectPrefix: prefix}, logs: logs, noWait: true}, []Target{fileTarget("events")}, f)
	<-n.ready
	waitState(t, n, "retrying", func(c bool, d string) bool { return !c && strings.Contains(d, "retrying") })
	n.Publish(okReport(policy.Signal{}, "events")) // dropped, must not block

	srv.Start()
	waitServing(t, n)
	nc := clientConn(t, srv.URL)
	if r := one(t, request(t, nc, prefix+".compact", ``, 1)); !r.OK {
		t.Fatalf("before restart: %+v", r)
	}
	f.next(t)

	srv.Restart()
	waitState(t, n, "reconnected", func(c bool, d string) bool { return c })
	nc2 := clientConn(t, srv.URL)
	n.mu.RLock()
	_ = n.nc.Flush()
	n.mu.RUnlock()
	if r := one(t, request(t, nc2, prefix+".pre-backup", ``, 1)); !r.OK {
		t.Fatalf("after restart: %+v", r)
	}
	f.next(t)

	out := logs.String()
	if c := strings.Count(out, "nats cannot connect"); c != 1 {
		t.Errorf("connection error logged %d times, want once:\n%s", c, out)
	}
	for _, msg := range []string{"nats connected", "nats disconnected", "nats reconnected"} {
		if c := strings.Count(out, `msg="`+msg); c != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", msg, c, out)
		}
	}
}

func TestNATSTokenAuth(t *testing.T) {
	srv := testutil.StartNATS(t, testutil.WithNATSToken("s3cret"))
	prefix := uniquePrefix(t)
	f := newFakePolicy()
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Token: "s3cret"}, []Target{fileTarget("events")}, f)
	nc, err := ConnectNATS(NATSConfig{URL: srv.URL, Token: "s3cret"}, 5*time.Second)
	if err != nil {
		t.Fatalf("ConnectNATS with the token: %v", err)
	}
	defer nc.Close()
	if r := one(t, request(t, nc, prefix+".compact", ``, 1)); !r.OK {
		t.Fatalf("reply = %+v", r)
	}

	// Wrong token: the client says so; the trigger keeps trying and says so.
	_, err = ConnectNATS(NATSConfig{URL: srv.URL, Token: "wrong"}, 5*time.Second)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("ConnectNATS with a wrong token: %v", err)
	}
	logs := &testlog.Buffer{}
	bad := startNodeOpts(t, srv.URL, nodeOpts{cfg: NATSConfig{SubjectPrefix: prefix, Node: "bad", Token: "wrong"}, logs: logs, noWait: true}, nil, newFakePolicy())
	d := waitState(t, bad, "refused", func(c bool, d string) bool {
		return !c && strings.Contains(strings.ToLower(d), "authorization violation")
	})
	if !strings.Contains(d, "retrying") {
		t.Fatalf("detail %q", d)
	}
}

func TestNATSTLS(t *testing.T) {
	srv := testutil.StartNATS(t, testutil.WithNATSTLS(true))
	prefix := uniquePrefix(t)
	f := newFakePolicy()
	cfg := NATSConfig{SubjectPrefix: prefix, TLSCA: srv.CAFile, TLSCert: srv.ClientCertFile, TLSKey: srv.ClientKeyFile}
	startNode(t, srv.URL, cfg, []Target{fileTarget("events")}, f)
	cfg.URL = srv.URL
	nc, err := ConnectNATS(cfg, 5*time.Second)
	if err != nil {
		t.Fatalf("ConnectNATS over TLS: %v", err)
	}
	defer nc.Close()
	if r := one(t, request(t, nc, prefix+".compact", ``, 1)); !r.OK {
		t.Fatalf("reply = %+v", r)
	}

	// Without the CA the server certificate is not trusted.
	_, err = ConnectNATS(NATSConfig{URL: srv.URL, TLSCert: srv.ClientCertFile, TLSKey: srv.ClientKeyFile}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("ConnectNATS without the CA: %v", err)
	}
	untrusting := startNodeOpts(t, srv.URL, nodeOpts{cfg: NATSConfig{SubjectPrefix: prefix, Node: "x"}, noWait: true}, nil, newFakePolicy())
	waitState(t, untrusting, "refused", func(c bool, d string) bool { return !c && strings.Contains(d, "certificate") })
}

func TestNATSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		cfg  NATSConfig
		want string
	}{
		{NATSConfig{SubjectPrefix: "a..b"}, "subject_prefix"},
		{NATSConfig{SubjectPrefix: "a.*"}, "subject_prefix"},
		{NATSConfig{Node: "my node"}, `node "my node"`},
		{NATSConfig{Token: "t", User: "u"}, "only one of"},
		{NATSConfig{Password: "p"}, "password without user"},
		{NATSConfig{TLSCert: "c.pem"}, "tls_cert and tls_key"},
		{NATSConfig{TLSCA: filepath.Join(dir, "missing.pem")}, "tls_ca"},
		{NATSConfig{CredsFile: filepath.Join(dir, "missing.creds")}, "creds_file"},
		{NATSConfig{TLSCA: notPEM}, "invalid nats config"},
	}
	for _, tc := range cases {
		_, err := NewNATS(tc.cfg, nil, nil)
		if !errors.Is(err, ErrNATSConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewNATS(%+v) = %v, want an error naming %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NATSOptions(NATSConfig{Node: "n"}, nil); err != nil {
		t.Errorf("NATSOptions with defaults: %v", err)
	}
}

func TestNATSEventsPublished(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := uniquePrefix(t)
	n := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, nil, newFakePolicy())
	nc := clientConn(t, srv.URL)
	sub, err := nc.SubscribeSync(prefix + ".events.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r := okReport(policy.Signal{Kind: policy.KindTimer}, "events")
	n.Publish(r)
	r2 := okReport(policy.Signal{Kind: policy.KindGrowth}, "odd name.x")
	n.Publish(r2)
	for _, want := range []struct{ subject, target, trigger string }{
		{prefix + ".events.events", "events", policy.KindTimer},
		{prefix + ".events.odd_name_x", "odd name.x", policy.KindGrowth},
	} {
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("no event: %v", err)
		}
		var got backends.Report
		if err := json.Unmarshal(msg.Data, &got); err != nil {
			t.Fatal(err)
		}
		if msg.Subject != want.subject || got.Target != want.target || got.Trigger != want.trigger || got.Node != "node-1" || got.RemovedRecords != 6 {
			t.Fatalf("event on %s: %+v", msg.Subject, got)
		}
	}
	// Before Run, or with NATS down, Publish drops without blocking.
	idle, err := NewNATS(NATSConfig{URL: srv.URL, Node: "idle"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	idle.Publish(r)
}

func TestNATSFitReply(t *testing.T) {
	var anomalies []backends.Anomaly
	for i := 0; i < 1000; i++ {
		anomalies = append(anomalies, backends.Anomaly{Target: "t", Type: backends.AnomalyInvalidLine, Path: "/p", Detail: fmt.Sprintf("line %d", i)})
	}
	rep := backends.Report{Target: "t", Anomalies: anomalies}
	reply := NATSReply{Node: "n", Reports: []backends.Report{rep}, Anomalies: anomalies}
	data := fitReply(reply, 8000)
	if len(data) > 8000 {
		t.Fatalf("reply is %d bytes", len(data))
	}
	var got NATSReply
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.AnomaliesOmitted == 0 || len(got.Anomalies)+got.AnomaliesOmitted != 1000 || len(got.Reports[0].Anomalies) != 0 {
		t.Fatalf("kept %d, omitted %d", len(got.Anomalies), got.AnomaliesOmitted)
	}
}

func TestNATSSharedServer(t *testing.T) {
	url := testutil.SharedNATS(t)
	prefix := uniquePrefix(t)
	f := newFakePolicy()
	startNode(t, url, NATSConfig{SubjectPrefix: prefix, Node: "shared-test"}, []Target{fileTarget("events")}, f)
	nc, err := ConnectNATS(NATSConfig{URL: url}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := one(t, request(t, nc, NATSSubject(prefix, "shared-test", VerbPreBackup), `{"targets":["events"]}`, 1))
	if !r.OK || r.Node != "shared-test" || len(r.Reports) != 1 {
		t.Fatalf("reply = %+v", r)
	}
	f.next(t)
}

// FuzzNATSParseRequest: parseRequest never panics, and what it accepts
// names only plausible config names, each once.
func FuzzNATSParseRequest(f *testing.F) {
	for _, seed := range []string{``, `{}`, `null`, `{"targets":["a","b","a"]}`, `{"targets":["../x"]}`,
		`{"reason":"r","dry_run":true}`, `{"targets":[1]}`, `{"x":1}`, `{"targets":["a"]}{}`, "\x00"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := parseRequest(data, 4096)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		seen := map[string]bool{}
		for _, name := range req.Targets {
			if checkTargetName(name) != nil || seen[name] {
				t.Fatalf("accepted %q in %q", name, data)
			}
			seen[name] = true
		}
	})
}
