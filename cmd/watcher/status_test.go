package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
)

// statusNow is the instant the canned document is rendered at.
var statusNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func tp(t time.Time) *time.Time { return &t }

// cannedStatus is a daemon's answer with one target in each interesting
// condition.
func cannedStatus() StatusDoc {
	return StatusDoc{
		Node: "node-1", Version: "v1.2.3", StartedAt: statusNow.Add(-3*time.Hour - 12*time.Minute),
		Ready: false, NotReady: []string{"redis target cache: not connected"},
		Targets: []TargetStatus{
			{
				Name: "events", Backend: "json", SizeBytes: 5 << 20, State: "idle",
				NextDue: tp(statusNow.Add(5 * time.Hour)),
				LastReport: &backends.Report{Target: "events", Backend: "json", Trigger: "timer",
					RemovedRecords: 1234, ReclaimedBytes: backends.Int64(3 << 20),
					StartedAt: statusNow.Add(-3*time.Minute - 2*time.Second), DurationMS: 1500},
				LastSuccess: tp(statusNow.Add(-3 * time.Minute)),
			},
			{
				Name: "audit", Backend: "rotating", SizeBytes: 2048, State: "backing_off",
				Until: tp(statusNow.Add(time.Hour + 2*time.Minute + 3*time.Second)), Stuck: true, ConsecutiveFailures: 4,
				LastReport: &backends.Report{Target: "audit", Backend: "rotating", Trigger: "growth",
					Error: "concurrent rotation detected", StartedAt: statusNow.Add(-2 * time.Hour)},
				Warnings: []string{"max_files in the config (5) differs from the files on disk (7): orphan segments are never compacted"},
			},
			{
				Name: "cache", Backend: "redis", SizeBytes: -1, State: "debouncing",
				Until: tp(statusNow.Add(12 * time.Second)), PendingSignals: 2,
			},
			{
				Name: "dead", Backend: "json", SizeBytes: 0, State: "cooldown", Compacting: true,
				LastReport: &backends.Report{Target: "dead", Backend: "json", Trigger: "nats", DryRun: true,
					RemovedRecords: 7, StartedAt: statusNow.Add(-30 * time.Second)},
			},
		},
		Disks: []DiskStatus{
			{Mountpoint: "/var/lib/papyra", UsedPercent: 91.25, UnderPressure: true, NothingReclaimable: true,
				Targets: []string{"events", "audit"}},
			{Mountpoint: "/srv", UsedPercent: 40},
		},
		NATS:     &ConnStatus{Addr: "nats://10.0.0.5:4222", Connected: false, Detail: "no servers available"},
		Redis:    []ConnStatus{{Addr: "127.0.0.1:6379", Connected: true}, {Addr: "10.0.0.9:6379", Connected: false}},
		Warnings: []string{"cooldown (30s) is longer than the debounce"},
	}
}

// row returns the table line of target name.
func row(t *testing.T, out, name string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return l
		}
	}
	t.Fatalf("no row for %s in:\n%s", name, out)
	return ""
}

func TestRenderStatus(t *testing.T) {
	var buf bytes.Buffer
	renderStatus(&buf, cannedStatus(), statusNow)
	out := buf.String()
	t.Logf("\n%s", out)

	if !strings.HasPrefix(out, "node node-1 · version v1.2.3 · up 3h12m · NOT READY\n") {
		t.Errorf("header: %q", strings.SplitN(out, "\n", 2)[0])
	}
	header := row(t, out, "TARGET")
	for _, col := range []string{"BACKEND", "SIZE", "LAST RUN", "RESULT", "RECLAIMED", "STATE", "WARNINGS"} {
		if !strings.Contains(header, col) {
			t.Errorf("header lacks %s: %q", col, header)
		}
	}
	for name, want := range map[string][]string{
		"events": {"json", "5.0 MiB", "3m ago", " ok ", "3.0 MiB / 1,234 rec", "idle, due at 17:00:00 "},
		"audit":  {"rotating", "2.0 KiB", "2h ago", "FAILED ×4", "backing off until 13:02:03 STUCK", "max_files in the config (5) differs fro…"},
		"cache":  {"redis", " ? ", "never", "debouncing in 12s (2 pending)"},
		"dead":   {"0 B", "30s ago", "dry run", "? / 7 rec", "running"},
	} {
		r := row(t, out, name)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("row %s lacks %q:\n%s", name, w, r)
			}
		}
	}
	if r := row(t, out, "events"); !strings.HasSuffix(r, " -") {
		t.Errorf("events row should end with no warnings (-): %q", r)
	}
	// The table is aligned: every row starts its RESULT column at the same
	// offset as the header.
	col := strings.Index(header, "RESULT")
	if r := row(t, out, "audit"); !strings.HasPrefix(r[col:], "FAILED") {
		t.Errorf("RESULT column not aligned (%d):\n%s\n%s", col, header, r)
	}

	for _, w := range []string{
		"not ready: redis target cache: not connected",
		"audit: last run failed: concurrent rotation detected (4 failures in a row)",
		"audit: stuck — compactions keep failing or make no progress",
		"warning: audit: max_files in the config (5) differs from the files on disk (7): orphan segments are never compacted",
		"warning: cooldown (30s) is longer than the debounce",
		"disk /var/lib/papyra: 91.2% used, under pressure, nothing left to reclaim (targets: events, audit)",
		"NATS disconnected: nats://10.0.0.5:4222 (no servers available)",
		"Redis disconnected: 10.0.0.9:6379",
	} {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("output lacks line %q", w)
		}
	}
	for _, unwanted := range []string{"/srv", "127.0.0.1:6379"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("output mentions %q, which needs no attention", unwanted)
		}
	}
}

func TestRenderStatusHealthy(t *testing.T) {
	doc := StatusDoc{Node: "n", Ready: true, StartedAt: statusNow.Add(-50 * time.Hour),
		Targets: []TargetStatus{{Name: "events", Backend: "json", SizeBytes: 10, State: "idle"}},
		NATS:    &ConnStatus{Addr: "nats://x", Connected: true}}
	var buf bytes.Buffer
	renderStatus(&buf, doc, statusNow)
	out := buf.String()
	if !strings.HasPrefix(out, "node n · up 2d2h · ready\n") {
		t.Errorf("header: %q", out)
	}
	// Header, blank line, column names, one row; nothing below.
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 4 {
		t.Errorf("healthy status has %d lines, want 4:\n%s", len(lines), out)
	}
	if r := row(t, out, "events"); !strings.Contains(r, "never") || !strings.Contains(r, "10 B") {
		t.Errorf("row: %q", r)
	}

	buf.Reset()
	renderStatus(&buf, StatusDoc{Ready: true}, statusNow)
	if !strings.Contains(buf.String(), "no targets\n") {
		t.Errorf("empty status: %q", buf.String())
	}
}

func TestStatusDurationAndUntil(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 12 * time.Second: "12s", 3*time.Minute + 59*time.Second: "3m", time.Hour: "1h",
		2*time.Hour + 5*time.Minute: "2h5m", 72 * time.Hour: "3d", 76 * time.Hour: "3d4h",
	} {
		if got := statusRoughDuration(d); got != want {
			t.Errorf("statusRoughDuration(%s) = %q, want %q", d, got, want)
		}
	}
	if got := statusAt(statusNow.Add(90*time.Second), statusNow, "until"); got != "in 1m" {
		t.Errorf("until 90s = %q", got)
	}
	if got := statusAt(statusNow.Add(49*time.Hour), statusNow, "until"); got != "until Mar 3 13:00" {
		t.Errorf("until 49h = %q", got)
	}
	if got := statusShorten("ééééé", 3); got != "éé…" {
		t.Errorf("shorten runes = %q", got)
	}
}

// serveStatus starts a server answering /status with doc.
func serveStatus(t *testing.T, doc StatusDoc) (addr string, hits *int) {
	t.Helper()
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		n++
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &n
}

func TestStatusCommandTable(t *testing.T) {
	addr, hits := serveStatus(t, cannedStatus())
	var stdout, stderr bytes.Buffer
	code := runStatus(context.Background(), []string{"--addr", addr}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	if *hits != 1 {
		t.Errorf("server hit %d times, want 1", *hits)
	}
	out := stdout.String()
	if r := row(t, out, "events"); !strings.Contains(r, "5.0 MiB") || !strings.Contains(r, " ok ") {
		t.Errorf("events row: %q", r)
	}
	if r := row(t, out, "audit"); !strings.Contains(r, "FAILED") {
		t.Errorf("audit row: %q", r)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %s", stderr.String())
	}

	// A full URL works too.
	stdout.Reset()
	if code := runStatus(context.Background(), []string{"--addr", "http://" + addr}, &stdout, &stderr); code != exitOK {
		t.Fatalf("URL addr: exit %d, stderr: %s", code, stderr.String())
	}
}

func TestStatusCommandJSONRoundtrip(t *testing.T) {
	doc := cannedStatus()
	addr, _ := serveStatus(t, doc)
	var stdout, stderr bytes.Buffer
	if code := runStatus(context.Background(), []string{"--json", "--addr", addr}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "{\n  \"node\": \"node-1\",") {
		t.Errorf("not pretty-printed: %.80q", stdout.String())
	}
	var got StatusDoc
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("--json output does not decode: %v", err)
	}
	want, _ := json.Marshal(doc)
	again, _ := json.Marshal(got)
	if !bytes.Equal(want, again) {
		t.Errorf("--json roundtrip differs:\n got %s\nwant %s", again, want)
	}
}

func TestStatusCommandUnreachable(t *testing.T) {
	// A port nothing listens on: listen, then close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var stdout, stderr bytes.Buffer
	code := runStatus(context.Background(), []string{"--addr", addr}, &stdout, &stderr)
	if code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
	msg := stderr.String()
	for _, w := range []string{"cannot reach the daemon at http://" + addr + "/status", "connection refused", "watcher run", "http_listen"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q: %s", w, msg)
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout not empty: %s", stdout.String())
	}
}

func TestStatusCommandErrors(t *testing.T) {
	notOK := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
	}))
	defer notOK.Close()
	notJSON := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("<html>hello</html>"))
	}))
	defer notJSON.Close()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // answer only once the client gave up
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer slow.Close()
	defer close(release)
	host := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"non-200", []string{"--addr", host(notOK)}, exitFailure,
			[]string{"the daemon at http://" + host(notOK) + "/status answered 503 Service Unavailable: shutting down"}},
		{"not json", []string{"--addr", host(notJSON)}, exitFailure,
			[]string{"the answer of http://" + host(notJSON) + "/status is not a status document"}},
		{"timeout", []string{"--addr", host(slow), "--timeout", "50ms"}, exitFailure,
			[]string{"cannot reach the daemon at http://" + host(slow) + "/status: no answer within 50ms"}},
		{"bad addr", []string{"--addr", "localhost"}, exitBadConfig, []string{`--addr "localhost": want HOST:PORT`}},
		{"bad scheme", []string{"--addr", "ftp://x:1"}, exitBadConfig, []string{`--addr "ftp://x:1"`}},
		{"extra arg", []string{"events"}, exitBadConfig, []string{`unexpected argument "events"`}},
		{"bad timeout", []string{"--timeout", "0s"}, exitBadConfig, []string{"--timeout must be positive"}},
		{"unknown flag", []string{"--nope"}, exitBadConfig, []string{"flag provided but not defined: -nope"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runStatus(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q: %s", w, stderr.String())
				}
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %s", stdout.String())
			}
		})
	}
}

// TestStatusFlagsThatDoNotGoTogether: --addr (one daemon over HTTP) and
// --nats (the fleet over NATS) are refused together, and the NATS-only
// flags without --nats, each with exit 2 and a line naming the flag, before
// anything is asked.
func TestStatusFlagsThatDoNotGoTogether(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--nats", "nats://127.0.0.1:1", "--addr", "127.0.0.1:1"}, "give one of them"},
		{[]string{"--prefix", "papyra.x"}, "--prefix is for asking the fleet: it needs --nats URL"},
		{[]string{"--addr", "127.0.0.1:1", "--creds", "/nonexistent"}, "--creds is for asking the fleet"},
		{[]string{"--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"--nats", "nats://127.0.0.1:1", "extra"}, `"extra"`},
	} {
		var stdout, stderr bytes.Buffer
		code := runStatus(context.Background(), c.args, &stdout, &stderr)
		if code != exitBadConfig || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("status %q: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr.String(), exitBadConfig, c.want)
		}
	}
}
