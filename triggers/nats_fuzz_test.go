package triggers

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/papyra/watcher/backends"
)

// fuzzNATSTargets are the targets the fuzzed node has: two node-local file
// targets and one shared redis target.
var fuzzNATSTargets = []Target{
	{Name: "events", Backend: backends.KindJSON, Files: []string{"/var/lib/papyra/events.ndjson"}},
	{Name: "audit_log-2", Backend: backends.KindRotating, Files: []string{"/var/lib/papyra/audit.ndjson"}},
	{Name: "streams", Backend: backends.KindRedis, RedisURL: "redis://127.0.0.1:6379/0"},
}

// fuzzNATSMaxBody is the body limit of the fuzzed node: small, so that the
// fuzzer reaches it.
const fuzzNATSMaxBody = 512

// FuzzNATSRequest feeds arbitrary request bodies to the code that parses a
// NATS request and selects the targets it names (prepare, over
// parseRequest, checkTargetName and selection), in every scope. It asserts
// that nothing panics, that an accepted body only ever selects configured
// targets (never a path, never a name the node does not have), and that a
// refused body carries a non-empty error that says nothing was compacted.
func FuzzNATSRequest(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`null`,
		`{"targets":[]}`,
		`{"targets":["events"]}`,
		`{"targets":["events","audit_log-2","streams"],"reason":"nightly backup","dry_run":true}`,
		`{"targets":["events","events"]}`,
		`{"targets":["nope"]}`,
		`{"targets":["../etc/passwd"]}`,
		`{"targets":["/etc/passwd"]}`,
		`{"targets":["events/../../etc/shadow"]}`,
		`{"targets":["..\\..\\windows"]}`,
		`{"targets":["ev\u0000ents"]}`,
		`{"targets":["events\n"]}`,
		`{"targets":[""]}`,
		`{"targets":"events"}`,
		`{"targets":[1,2]}`,
		`{"targets":["events"],"path":"/etc/passwd"}`,
		`{"targets":["events"]} {"targets":["streams"]}`,
		`{"targets":["events"]}garbage`,
		`{"TARGETS":["events"]}`,
		`{"targets":["\u002e\u002e/x"]}`,
		`[`,
		`"events"`,
		strings.Repeat(" ", fuzzNATSMaxBody+1),
		`{"targets":["` + strings.Repeat("a", fuzzNATSMaxBody) + `"]}`,
	} {
		f.Add([]byte(seed))
	}
	// Papyra records (testdata/papyra: inputs of the json golden cases):
	// JSON objects with the wrong fields, which must be refused.
	for _, name := range []string{"count", "corrupt_lines", "unicode", "timestamp_missing_or_bad"} {
		data, err := os.ReadFile(filepath.Join("testdata", "papyra", name+".ndjson"))
		if err != nil {
			f.Fatalf("seed fixture %s: %v", name, err)
		}
		for i, line := range bytes.Split(data, []byte("\n")) {
			if i >= 3 {
				break
			}
			f.Add(line)
		}
	}

	n, err := NewNATS(NATSConfig{URL: "nats://127.0.0.1:1", Node: "fuzz-node", MaxBodyBytes: fuzzNATSMaxBody}, fuzzNATSTargets, nil)
	if err != nil {
		f.Fatal(err)
	}
	configured := map[string]Target{}
	for _, t := range fuzzNATSTargets {
		configured[t.Name] = t
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		req, perr := parseRequest(body, fuzzNATSMaxBody)
		if perr != nil && perr.Error() == "" {
			t.Fatalf("parseRequest(%q): error with an empty message", body)
		}
		if perr == nil && len(body) > fuzzNATSMaxBody {
			t.Fatalf("parseRequest accepted a %d-byte body over the %d-byte limit", len(body), fuzzNATSMaxBody)
		}
		if perr == nil {
			for _, name := range req.Targets {
				if name == "" || strings.ContainsAny(name, `/\`) || strings.Contains(name, "..") {
					t.Fatalf("parseRequest(%q) accepted target name %q that looks like a path", body, name)
				}
			}
		}
		for _, sc := range []scope{scopeLocal, scopeShared, scopeNode} {
			req, sel, refusal := n.prepare(body, sc)
			if refusal != nil {
				if refusal.Error == "" {
					t.Fatalf("prepare(%q, %s): refusal with an empty error", body, sc)
				}
				if !strings.Contains(refusal.Error, "nothing compacted") {
					t.Fatalf("prepare(%q, %s): refusal %q does not say nothing was compacted", body, sc, refusal.Error)
				}
				if refusal.OK {
					t.Fatalf("prepare(%q, %s): refusal says ok", body, sc)
				}
				if len(sel) != 0 {
					t.Fatalf("prepare(%q, %s): refused but selected %v", body, sc, sel)
				}
				continue
			}
			if perr != nil {
				t.Fatalf("prepare(%q, %s) accepted a body parseRequest refuses: %v", body, sc, perr)
			}
			for _, name := range req.Targets {
				if _, ok := configured[name]; !ok {
					t.Fatalf("prepare(%q, %s) accepted unconfigured target %q", body, sc, name)
				}
			}
			for _, s := range sel {
				c, ok := configured[s.Name]
				if !ok {
					t.Fatalf("prepare(%q, %s) selected unconfigured target %q", body, sc, s.Name)
				}
				if s.Backend != c.Backend || strings.Join(s.Files, ",") != strings.Join(c.Files, ",") || s.RedisURL != c.RedisURL {
					t.Fatalf("prepare(%q, %s) selected %+v, which is not the configured %+v", body, sc, s, c)
				}
				if sc == scopeShared && !isShared(s) || sc == scopeLocal && isShared(s) {
					t.Fatalf("prepare(%q, %s) selected %q of the wrong class", body, sc, s.Name)
				}
				if len(req.Targets) > 0 && !slices.Contains(req.Targets, s.Name) {
					t.Fatalf("prepare(%q, %s) selected %q, which the request did not name", body, sc, s.Name)
				}
			}
			// What a reply would carry round-trips as JSON.
			if _, err := json.Marshal(req); err != nil {
				t.Fatalf("accepted request does not marshal: %v", err)
			}
		}
	})
}
