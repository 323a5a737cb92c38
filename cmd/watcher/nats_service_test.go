package main

import (
	"context"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// TestNATSServiceVersionIsTheWatchers: the daemon's micro service announces
// the version `watcher version` prints — stamped by -X main.version=v1.2.3
// as 1.2.3, recorded by `go install …@v2.0.1` as 2.0.1, a development build
// as 0.0.0-dev — with that version as it is in the metadata.
func TestNATSServiceVersionIsTheWatchers(t *testing.T) {
	defer func(v string, r func() (*debug.BuildInfo, bool)) { version, readBuildInfo = v, r }(version, readBuildInfo)
	for _, c := range []struct{ stamped, module, service, meta string }{
		{"v1.2.3", "", "1.2.3", "v1.2.3"},
		{"", "v2.0.1", "2.0.1", "v2.0.1"},
		{"", "(devel)", "0.0.0-dev", "dev"},
	} {
		t.Run(c.meta, func(t *testing.T) {
			version = c.stamped
			readBuildInfo = func() (*debug.BuildInfo, bool) {
				return &debug.BuildInfo{Main: debug.Module{Path: "github.com/papyra/watcher", Version: c.module}}, true
			}
			if ver, _ := buildVersion(); ver != c.meta {
				t.Fatalf("buildVersion = %q, want %q", ver, c.meta)
			}
			srv := testutil.StartNATS(t)
			cfg := &Config{}
			cfg.Watcher.Node = "n1"
			cfg.NATS.URL, cfg.NATS.SubjectPrefix = srv.URL, requestPrefix()
			n, err := triggers.NewNATS(natsConfig(cfg), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- n.Run(ctx, func(policy.Signal) {}) }()
			defer func() { cancel(); <-done }()
			select {
			case <-n.Ready():
			case <-time.After(10 * time.Second):
				t.Fatal("NATS trigger not ready")
			}
			nc, err := nats.Connect(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			msg, err := nc.Request("$SRV.INFO."+triggers.ServiceName, nil, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var info micro.Info
			if err := json.Unmarshal(msg.Data, &info); err != nil {
				t.Fatal(err)
			}
			if info.Version != c.service || info.Metadata["version"] != c.meta {
				t.Fatalf("$SRV.INFO version %q, metadata version %q; want %q and %q",
					info.Version, info.Metadata["version"], c.service, c.meta)
			}
		})
	}
}

// TestRequestExpectHelp: --expect's help says what 0 does: wait for the
// replies of the watchers discovered by $SRV.PING.
func TestRequestExpectHelp(t *testing.T) {
	code, _, stderr := runReq(t, "-h")
	if code != exitOK {
		t.Fatalf("request -h: exit %d", code)
	}
	i := strings.Index(stderr, "-expect")
	if i < 0 {
		t.Fatalf("no --expect in the help:\n%s", stderr)
	}
	help := stderr[i:]
	if j := strings.Index(help, "\n  -"); j >= 0 {
		help = help[:j]
	}
	if strings.Contains(help, "shortly after the first") || !strings.Contains(help, "$SRV.PING.papyra-watcher") || !strings.Contains(help, "--node") {
		t.Errorf("--expect help does not describe discovery:\n%s", help)
	}
}
