package triggers

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
)

// TestServiceVersion: the micro service version is the watcher's version
// without its leading "v" when that is a semantic version, and 0.0.0-dev
// otherwise (micro refuses anything but semver).
func TestServiceVersion(t *testing.T) {
	for v, want := range map[string]string{
		"v1.2.3":                             "1.2.3",
		"1.2.3":                              "1.2.3",
		"v1.4.0-rc.1+build.7":                "1.4.0-rc.1+build.7",
		"v0.0.0-20260102030405-abcdef012345": "0.0.0-20260102030405-abcdef012345", // a Go pseudo-version
		"dev":                                DevServiceVersion,
		"":                                   DevServiceVersion,
		"v1.2":                               DevServiceVersion,
		"v01.2.3":                            DevServiceVersion,
		"1.2.3-01":                           DevServiceVersion,
		"release 7":                          DevServiceVersion,
	} {
		if got := ServiceVersion(v); got != want {
			t.Errorf("ServiceVersion(%q) = %q, want %q", v, got, want)
		}
	}
}

// serviceInfo asks the one papyra-watcher service on the server for its
// $SRV.INFO.
func serviceInfo(t *testing.T, nc *nats.Conn) micro.Info {
	t.Helper()
	msg, err := nc.Request("$SRV.INFO."+ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("$SRV.INFO: %v", err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatalf("$SRV.INFO answer %q: %v", msg.Data, err)
	}
	return info
}

// TestNATSServiceAnnouncesVersion: $SRV.INFO carries the watcher's version
// — a release's as the service version, without the "v", a development
// build's as 0.0.0-dev — and the version as it is in the metadata.
func TestNATSServiceAnnouncesVersion(t *testing.T) {
	for _, c := range []struct{ version, service, meta string }{
		{"v1.2.3", "1.2.3", "v1.2.3"},
		{"dev", "0.0.0-dev", "dev"},
		{"", "0.0.0-dev", "dev"},
	} {
		t.Run(c.version, func(t *testing.T) {
			srv := testutil.StartNATS(t)
			startNode(t, srv.URL, NATSConfig{SubjectPrefix: uniquePrefix(t), Version: c.version}, []Target{fileTarget("a")}, newFakePolicy())
			info := serviceInfo(t, clientConn(t, srv.URL))
			if info.Version != c.service || info.Metadata["version"] != c.meta {
				t.Fatalf("$SRV.INFO version %q, metadata version %q; want %q and %q", info.Version, info.Metadata["version"], c.service, c.meta)
			}
		})
	}
}

// endpointStats returns the $SRV.STATS of endpoint name of the one
// papyra-watcher service on the server, once it has counted want requests
// (micro counts a request when its handler has returned, just after the
// reply went out).
func endpointStats(t *testing.T, nc *nats.Conn, name string, want int) *micro.EndpointStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg, err := nc.Request("$SRV.STATS."+ServiceName, nil, 5*time.Second)
		if err != nil {
			t.Fatalf("$SRV.STATS: %v", err)
		}
		var st micro.Stats
		if err := json.Unmarshal(msg.Data, &st); err != nil {
			t.Fatalf("$SRV.STATS answer %q: %v", msg.Data, err)
		}
		var e *micro.EndpointStats
		for _, s := range st.Endpoints {
			if s.Name == name {
				e = s
			}
		}
		if e == nil {
			t.Fatalf("$SRV.STATS has no endpoint %q", name)
		}
		if e.NumRequests >= want || time.Now().After(deadline) {
			return e
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNATSServiceStats: $SRV.STATS counts each endpoint's requests, and in
// num_errors every reply with ok:false: a refusal, and a request whose
// compaction failed (answered once the work was done), which also carries
// micro's error headers.
func TestNATSServiceStats(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	f.report = func(sig policy.Signal, target string) backends.Report {
		r := okReport(sig, target)
		if target == "bad" {
			r.Error = "disk full"
		}
		return r
	}
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("good"), fileTarget("bad")}, f)
	nc := clientConn(t, srv.URL)

	if r := one(t, request(t, nc, prefix+".compact", `{"targets":["good"]}`, 1)); !r.OK {
		t.Fatalf("good: %+v", r)
	}
	f.next(t)
	if r := one(t, request(t, nc, prefix+".compact", `{"targets":["nope"]}`, 1)); r.OK {
		t.Fatalf("unknown target: %+v", r)
	}
	msg, err := nc.Request(prefix+".compact", []byte(`{"targets":["bad"]}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.next(t)
	var r NATSReply
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.OK || r.Reports[0].Error != "disk full" {
		t.Fatalf("failed compaction: %+v, %v", r, err)
	}
	if h := msg.Header.Get(micro.ErrorHeader); !strings.Contains(h, "1 of 1 targets failed") || msg.Header.Get(micro.ErrorCodeHeader) != "500" {
		t.Errorf("failed compaction's headers %v: want micro's error headers", msg.Header)
	}

	e := endpointStats(t, nc, "compact", 3)
	if e.NumRequests != 3 || e.NumErrors != 2 || !strings.Contains(e.LastError, "1 of 1 targets failed") {
		t.Fatalf("compact endpoint: %d requests, %d errors, last error %q; want 3, 2 and the failed compaction",
			e.NumRequests, e.NumErrors, e.LastError)
	}
	if e := endpointStats(t, nc, "node-compact", 0); e.NumRequests != 0 || e.NumErrors != 0 {
		t.Fatalf("node-compact endpoint: %d requests, %d errors; want none", e.NumRequests, e.NumErrors)
	}

	// post-backup and status count too; a post-backup refused is an error.
	one(t, request(t, nc, prefix+".post-backup", `{}`, 1))
	if e := endpointStats(t, nc, "post-backup", 1); e.NumRequests != 1 || e.NumErrors != 1 {
		t.Fatalf("post-backup endpoint: %d requests, %d errors; want 1 and 1", e.NumRequests, e.NumErrors)
	}
}
