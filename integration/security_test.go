package integration

// Security: nothing outside the configured targets can be reached through
// the watcher, files keep their mode and owner, secrets stay secret, and
// absurd input is refused. Everything runs the built binary.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/papyra/watcher/internal/testutil"
)

// secSnapshot is what must not change about a file nobody may touch.
type secSnapshot struct {
	data  []byte
	mode  os.FileMode
	ino   uint64
	mtime time.Time
}

func secSnap(t testing.TB, path string) secSnapshot {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return secSnapshot{data: data, mode: fi.Mode(), ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime()}
}

// secUnchanged fails unless path is exactly as snap recorded it.
func secUnchanged(t testing.TB, path string, snap secSnapshot, why string) {
	t.Helper()
	now := secSnap(t, path)
	if !bytes.Equal(now.data, snap.data) || now.mode != snap.mode || now.ino != snap.ino || !now.mtime.Equal(snap.mtime) {
		t.Errorf("%s: %s was touched (size %d→%d, mode %v→%v, inode %d→%d, mtime %v→%v)", why, path,
			len(snap.data), len(now.data), snap.mode, now.mode, snap.ino, now.ino, snap.mtime, now.mtime)
	}
}

// secReply is the part of a NATS reply the tests read.
type secReply struct {
	Node           string            `json:"node"`
	OK             bool              `json:"ok"`
	Reports        []json.RawMessage `json:"reports"`
	UnknownTargets []string          `json:"unknown_targets"`
	Error          string            `json:"error"`
}

// TestSecurityNATSRefusesPaths: NATS requests that name a path, a traversal,
// an unknown target, or that are oversized or malformed are refused with a
// clear ok:false reply, compact nothing (neither the configured target nor
// a file the path points at), and the daemon keeps serving valid requests.
func TestSecurityNATSRefusesPaths(t *testing.T) {
	t.Parallel()
	ns := testutil.StartNATS(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	target := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, target, genRecords(0, 300, 1795599000, 40))
	// A Papyra-looking file that is not a target, where a traversal from
	// the data directory would land.
	victim := filepath.Join(dir, "passwd")
	writeFile(t, victim, genRecords(0, 300, 1795599000, 40))
	victimSnap := secSnap(t, victim)
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "")+fmt.Sprintf(`
[nats]
url = %q
`, ns.URL)+jsonTarget("events", "events.ndjson", 100))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	targetSnap := secSnap(t, target)

	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ask := func(subject string, body []byte) secReply {
		t.Helper()
		m, err := nc.Request(subject, body, 10*time.Second)
		if err != nil {
			t.Fatalf("request %q on %s: %v", clip(body), subject, err)
		}
		var r secReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("reply is not JSON: %v\n%s", err, m.Data)
		}
		return r
	}
	bad := []struct {
		body string
		want string // in the error
	}{
		{`{"targets":["../passwd"]}`, "never by a path"},
		{`{"targets":["../../etc/passwd"]}`, "never by a path"},
		{fmt.Sprintf(`{"targets":[%q]}`, victim), "never by a path"},
		{`{"targets":["/etc/passwd"]}`, "never by a path"},
		{`{"targets":["events/../../passwd"]}`, "never by a path"},
		{`{"targets":["..\\passwd"]}`, "never by a path"},
		{`{"targets":["passwd"]}`, "unknown target"},
		{`{"targets":["events","passwd"]}`, "unknown target"},
		{`{"targets":["events"],"path":"/etc/passwd"}`, "unknown field"},
		{`{"targets":"events"}`, "invalid request body"},
		{`{"targets":["ev\u0000ents"]}`, "control character"},
		{`{"targets":["events"]} {"targets":["passwd"]}`, "data after"},
		{`{"targets":["events"],"reason":"` + strings.Repeat("A", 100<<10) + `"}`, "more than the limit"},
	}
	subjects := []string{"papyra.compaction.compact", "papyra.compaction.pre-backup",
		"papyra.compaction.pre-migration", "papyra.compaction.node.it-node.compact"}
	for i, c := range bad {
		subject := subjects[i%len(subjects)]
		r := ask(subject, []byte(c.body))
		if r.OK || r.Error == "" || !strings.Contains(r.Error, c.want) || !strings.Contains(r.Error, "nothing compacted") {
			t.Errorf("%s %q: reply ok=%v error=%q; want a refusal containing %q and \"nothing compacted\"", subject, clip([]byte(c.body)), r.OK, r.Error, c.want)
		}
		if len(r.Reports) != 0 {
			t.Errorf("%s %q: refusal carries reports %s", subject, clip([]byte(c.body)), r.Reports)
		}
	}
	secUnchanged(t, target, targetSnap, "refused requests")
	secUnchanged(t, victim, victimSnap, "refused requests")
	if _, body, err := d.Get("/metrics"); err == nil {
		if v, _ := metricValue(parseMetrics(body), "papyra_compactor_compactions_total", nil); v != 0 {
			t.Errorf("compactions_total = %v after refused requests only, want 0", v)
		}
	}

	// The daemon still serves a valid request, and only its target.
	r := ask("papyra.compaction.compact", []byte(`{"targets":["events"],"reason":"after refusals"}`))
	if !r.OK || len(r.Reports) != 1 {
		t.Fatalf("valid request after the refusals: %+v", r)
	}
	if n := countLines(t, target); n != 100 {
		t.Errorf("target holds %d lines after a valid compact, want 100", n)
	}
	secUnchanged(t, victim, victimSnap, "a valid request for another target")
	if d.Exited() {
		t.Fatalf("daemon exited:\n%s", d.Stderr())
	}
}

// TestSecurityConfigPathsCleanedAndAbsolute: a relative, unclean target
// path is resolved against the config file's directory (never the working
// directory) and cleaned; its symlinked form is refused without
// follow_symlinks, for a rotating set too, and followed with it, the link
// staying a link.
func TestSecurityConfigPathsCleanedAndAbsolute(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	confDir := filepath.Join(dir, "conf")
	path := filepath.Join(confDir, "data", "events.ndjson")
	writeFile(t, path, genRecords(0, 50, 1795599000, 20))
	cfg := writeConfig(t, confDir, baseConfig+`
[[target]]
name = "events"
backend = "json"
path = "./data/../data//./events.ndjson"
[target.retention]
max_records = 10
`)
	// Run from another directory that also has a data/events.ndjson: it
	// must not be the one compacted.
	other := filepath.Join(dir, "cwd")
	decoy := filepath.Join(other, "data", "events.ndjson")
	writeFile(t, decoy, genRecords(0, 50, 1795599000, 20))
	decoySnap := secSnap(t, decoy)
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(watcherBin, "compact", "--config", cfg, "--json")
	cmd.Dir = other
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("watcher compact from another directory: %v\n%s", err, out)
	}
	reps := parseReports(t, string(out))
	if len(reps) != 1 || reps[0].Error != "" || reps[0].AfterRecords != 10 {
		t.Fatalf("reports: %+v", reps)
	}
	if n := countLines(t, path); n != 10 {
		t.Errorf("the configured file holds %d lines, want 10", n)
	}
	secUnchanged(t, decoy, decoySnap, "a relative path must resolve against the config's directory")

	// A rotating set whose active path is a symlink.
	realDir := filepath.Join(dir, "real")
	writeFile(t, filepath.Join(realDir, "rot.ndjson"), genRecords(100, 20, 1795599900, 20))
	writeFile(t, filepath.Join(realDir, "rot.ndjson.1"), genRecords(80, 20, 1795599800, 20))
	link := filepath.Join(confDir, "data", "rot.ndjson")
	if err := os.Symlink(filepath.Join(realDir, "rot.ndjson"), link); err != nil {
		t.Fatal(err)
	}
	realSnap := secSnap(t, filepath.Join(realDir, "rot.ndjson"))
	rot := func(follow bool) string {
		return writeConfig(t, t.TempDir(), baseConfig+fmt.Sprintf(`
[[target]]
name = "rot"
backend = "rotating"
path = %q
max_bytes = 100000
max_files = 3
follow_symlinks = %v
[target.retention]
max_records = 5
`, link, follow))
	}
	r := runWatcher(t, 30*time.Second, "compact", "--config", rot(false), "--json")
	wantCode(t, r, 1, "compact of a symlinked rotating set without follow_symlinks")
	reps = parseReports(t, r.Stdout)
	if len(reps) != 1 || !strings.Contains(reps[0].Error, "symbolic link") || !strings.Contains(reps[0].Error, "follow_symlinks") {
		t.Errorf("refusal should say symbolic link and follow_symlinks: %+v", reps)
	}
	secUnchanged(t, filepath.Join(realDir, "rot.ndjson"), realSnap, "refused symlink")
	r = runWatcher(t, 30*time.Second, "compact", "--config", rot(true), "--json")
	wantCode(t, r, 0, "compact of a symlinked rotating set with follow_symlinks")
	if n := countLines(t, filepath.Join(realDir, "rot.ndjson")); n != 5 {
		t.Errorf("with follow_symlinks the real active file holds %d lines, want 5", n)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link is no longer a link: %v", err)
	}
}

// TestSecurityPlantedLinksNotFollowed: symlinks planted at every name the
// watcher might write in the target's directory (Papyra's predictable
// temporary name, the old-inode link name, names with the watcher's temp
// prefix) and pointing at a file outside are never written through nor
// removed: the victim stays byte-for-byte the same; the target holds its
// original or its compacted content, and a clear error is given when the
// compaction cannot proceed. It runs with method "copy", which writes and
// links those names, and with the default method, which compacts in place
// where the filesystem can and must leave the links alone too.
func TestSecurityPlantedLinksNotFollowed(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"copy", "auto"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			securityPlantedLinks(t, method)
		})
	}
}

func securityPlantedLinks(t *testing.T, method string) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	path := filepath.Join(data, "events.ndjson")
	orig := genRecords(0, 200, 1795599000, 30)
	writeFile(t, path, orig)
	victim := filepath.Join(dir, "victim.ndjson")
	writeFile(t, victim, []byte("precious\n"))
	victimSnap := secSnap(t, victim)
	planted := []string{
		path + ".compact.tmp",
		filepath.Join(data, ".events.ndjson.watcher-old"),
		filepath.Join(data, ".events.ndjson.watcher-tmp-"),
		filepath.Join(data, ".events.ndjson.watcher-tmp-0000000000000000"),
		filepath.Join(data, ".events.ndjson.watcher-tmp-ffffffffffffffff"),
	}
	for _, p := range planted {
		if err := os.Symlink(victim, p); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, dir, baseConfig+jsonTargetMethod("events", "events.ndjson", 50, method))
	for i := range 3 {
		r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
		reps := parseReports(t, r.Stdout)
		if len(reps) != 1 {
			t.Fatalf("run %d: %s", i, r)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		compacted := bytes.Join(splitLines(orig)[150:], nil)
		switch {
		case r.Code == 0 && bytes.Equal(trimFiller(t, path, got), compacted):
		case r.Code == 1 && reps[0].Error != "" && bytes.Equal(got, orig):
			if !strings.Contains(reps[0].Error, "watcher-old") {
				t.Errorf("run %d: the error should name the name in the way: %q", i, reps[0].Error)
			}
		default:
			t.Fatalf("run %d: exit %d, error %q, target holds %d bytes (original %d, compacted %d)", i, r.Code, reps[0].Error, len(got), len(orig), len(compacted))
		}
		secUnchanged(t, victim, victimSnap, "planted symlinks")
		for _, p := range planted {
			if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("run %d: planted link %s was removed or replaced (%v): the watcher only removes its own regular files", i, p, err)
			}
		}
	}
	// Once the foreign link is gone, compaction proceeds.
	os.Remove(filepath.Join(data, ".events.ndjson.watcher-old"))
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact after the foreign link is removed")
	if n := countLines(t, path); n != 50 {
		t.Errorf("target holds %d lines, want 50", n)
	}
	secUnchanged(t, victim, victimSnap, "planted symlinks")
}

// TestSecurityModeOwnerStateDir: a compacted file keeps its mode (0640)
// and owner (nobody, chowned by root before compacting), json and rotating
// alike; the file really was replaced (new inode); the state directory is
// created 0700. The targets set method = "copy": the subject is the new
// file that replaces the old one (an in-place compaction keeps the inode,
// and with it mode and owner).
func TestSecurityModeOwnerStateDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		needOrSkip(t, "chown to nobody needs root (run the integration tests as root)")
	}
	const nobody = 65534
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "data", "events.ndjson")
	rotPath := filepath.Join(dir, "data", "rot.ndjson")
	writeFile(t, jsonPath, genRecords(0, 100, 1795599000, 30))
	writeFile(t, rotPath, genRecords(50, 50, 1795599900, 30))
	writeFile(t, rotPath+".1", genRecords(0, 50, 1795599800, 30))
	files := []string{jsonPath, rotPath, rotPath + ".1"}
	inodes := map[string]uint64{}
	for _, p := range files {
		if err := os.Chmod(p, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		inodes[p] = statID(t, p).ino
	}
	cfg := writeConfig(t, dir, strings.Replace(baseConfig, `state_dir = "state"`, `state_dir = "var/lib/state"`, 1)+
		jsonTargetMethod("events", "events.ndjson", 10, "copy")+fmt.Sprintf(`
[[target]]
name = "rot"
backend = "rotating"
path = %q
max_bytes = 2000
max_files = 3
method = "copy"
[target.retention]
max_records = 20
`, rotPath))
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact")
	for _, p := range []string{jsonPath, rotPath} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || st.Uid != nobody || st.Gid != nobody {
			t.Errorf("%s after compaction: mode %v owner %d:%d; want -rw-r----- %d:%d", p, fi.Mode().Perm(), st.Uid, st.Gid, nobody, nobody)
		}
		if st.Ino == inodes[p] {
			t.Errorf("%s keeps its inode: it was not replaced, so mode and owner prove nothing", p)
		}
	}
	if n := countLines(t, jsonPath); n != 10 {
		t.Errorf("json target holds %d lines, want 10", n)
	}
	// Every rotating segment that exists now has the mode and owner too.
	segs, _ := filepath.Glob(rotPath + "*")
	for _, p := range segs {
		if strings.Contains(p, ".watcher-") {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || st.Uid != nobody || st.Gid != nobody {
			t.Errorf("segment %s: mode %v owner %d:%d; want -rw-r----- %d:%d", p, fi.Mode().Perm(), st.Uid, st.Gid, nobody, nobody)
		}
	}
	for _, d := range []string{filepath.Join(dir, "var", "lib", "state")} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatalf("state dir: %v", err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("state dir %s has mode %v, want drwx------", d, fi.Mode().Perm())
		}
	}

	// The daemon creates its state directory 0700 too.
	dir2 := t.TempDir()
	addr := freeAddr(t)
	cfg2 := writeConfig(t, dir2, strings.Replace(daemonHeader(addr, "", ""), `state_dir = "state"`, `state_dir = "run/state"`, 1)+
		jsonTarget("events", "events.ndjson", 10))
	d := startDaemon(t, cfg2, addr)
	d.WaitReady(15 * time.Second)
	if fi, err := os.Stat(filepath.Join(dir2, "run", "state")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("daemon state dir: %v, %v; want drwx------", fi.Mode().Perm(), err)
	}
	d.StopClean()
}

// TestSecurityHTTPDefaultLoopback: with no http_listen key the daemon
// serves on the documented default, 127.0.0.1:9464 (docs/config.md, README:
// "loopback by default"), never on a wildcard address. When the port is
// taken by another process the error names the same loopback address.
func TestSecurityHTTPDefaultLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "data", "events.ndjson"), genRecords(0, 10, 1795599000, 30))
	cfg := writeConfig(t, dir, strings.Replace(daemonHeader("X", "", ""), `http_listen = "X"`, "", 1)+
		jsonTarget("events", "events.ndjson", 100))
	d := startDaemon(t, cfg, "127.0.0.1:9464")
	re := regexp.MustCompile(`msg="serving[^"]*" addr=(\S+)|http_listen (\S+):`)
	eventually(t, 15*time.Second, "the daemon is running or has exited", func() (bool, string) {
		return re.MatchString(d.Stderr()) || strings.Contains(d.Stderr(), "watcher running") || d.Exited(), d.Stderr()
	})
	m := re.FindStringSubmatch(d.Stderr())
	if m == nil {
		// Until d56c718 an absent http_listen turned HTTP off.
		t.Fatalf("no http_listen key: the daemon serves no HTTP at all; docs/config.md and README promise the loopback default 127.0.0.1:9464\n%s", d.Stderr())
	}
	if got := m[1] + m[2]; got != "127.0.0.1:9464" {
		t.Errorf("default listen address %q, want 127.0.0.1:9464 (loopback)", got)
	}
	if !d.Exited() {
		d.Signal(syscall.SIGTERM)
		d.Wait(15 * time.Second)
	}
}

// TestSecurityHTTPReadOnly: no method other than GET/HEAD is served on any
// path, and only the four documented endpoints exist; no endpoint, with any
// query or body, compacts a target.
func TestSecurityHTTPReadOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, path, genRecords(0, 300, 1795599000, 30))

	addr := freeAddr(t)
	cfg := writeConfig(t, t.TempDir(), daemonHeader(addr, "", "")+fmt.Sprintf(`
[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = 100
`, path))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	snap := secSnap(t, path)
	paths := []string{"/", "/metrics", "/healthz", "/readyz", "/status", "/status?target=events&compact=1",
		"/compact", "/compact?target=events", "/targets/events", "/targets/events/compact", "/events",
		"/debug/pprof/", "/debug/vars", "/reload", "/config", "/quitquitquit"}
	methods := []string{"POST", "PUT", "DELETE", "PATCH"}
	for _, p := range paths {
		for _, meth := range methods {
			req, _ := http.NewRequest(meth, "http://"+addr+p, strings.NewReader(`{"targets":["events"],"target":"events"}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := httpClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", meth, p, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s: %d, want 405 or 404", meth, p, resp.StatusCode)
			}
		}
		// GET with a target in the query changes nothing either; only the
		// four documented endpoints exist.
		code, _, err := d.Get(p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		base := strings.SplitN(p, "?", 2)[0]
		documented := base == "/metrics" || base == "/healthz" || base == "/readyz" || base == "/status"
		if documented && code != 200 || !documented && code != 404 {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	secUnchanged(t, path, snap, "HTTP requests")
	_, body, err := d.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := metricValue(parseMetrics(body), "papyra_compactor_compactions_total", nil); v != 0 {
		t.Errorf("compactions_total = %v after HTTP requests only, want 0", v)
	}
	d.StopClean()
}

// TestSecuritySecretsNeverShown: a Redis password in a redis:// URL, a NATS
// token, and a NATS password in the URL never appear in the daemon's logs
// (at debug level), /status, /metrics, `watcher status`, `watcher compact`
// or `watcher validate`, while both servers are unreachable and every
// attempt fails with an error.
func TestSecuritySecretsNeverShown(t *testing.T) {
	t.Parallel()
	const redisPW, natsTok, natsURLPW, natsURLTok = "S3cretRedisPw4711", "S3cretNatsTok0815", "S3cretNatsUrlPw42", "S3cretNatsUrlTok99"
	redisAddr, natsAddr := freeAddr(t), freeAddr(t) // closed ports
	cases := []struct {
		name, nats string
	}{
		{"token", fmt.Sprintf(`url = "nats://%s"
token = %q`, natsAddr, natsTok)},
		{"url password", fmt.Sprintf(`url = "nats://natsuser:%s@%s"`, natsURLPW, natsAddr)},
		{"url token in a server list", fmt.Sprintf(`url = "nats://%s@%s, nats://natsuser:%s@%s"`, natsURLTok, natsAddr, natsURLPW, natsAddr)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			addr := freeAddr(t)
			body := strings.Replace(daemonHeader(addr, "", `backoff_base = "100ms"
backoff_max = "200ms"`), `log_level = "info"`, `log_level = "debug"`, 1)
			body = strings.Replace(body, "[triggers.timer]\ninterval = \"0s\"", "[triggers.timer]\ninterval = \"1s\"\njitter = \"0%\"", 1)
			cfg := writeConfig(t, dir, body+fmt.Sprintf(`
[triggers.redis_memory]
interval = "200ms"

[nats]
%s

[[target]]
name = "streams"
backend = "redis"
url = "redis://papyra:%s@%s/0"
prefix = "sec-never-used"
[target.retention]
max_records = 10
`, c.nats, redisPW, redisAddr))
			secrets := []string{redisPW, natsTok, natsURLPW, natsURLTok}
			check := func(what, text string) {
				t.Helper()
				for _, s := range secrets {
					if strings.Contains(text, s) {
						// Until the fix that came with this test, triggers/nats.go
						// logged "nats trigger started" with the raw URL.
						line, _ := findLogLine(text, s)
						t.Errorf("%s contains the secret %q in: %s", what, s, line)
					}
				}
			}
			r := runWatcher(t, 30*time.Second, "validate", "--config", cfg)
			wantCode(t, r, 0, "validate")
			check("watcher validate", r.Stdout+r.Stderr)
			r = runWatcher(t, 60*time.Second, "compact", "--config", cfg, "--json")
			wantCode(t, r, 1, "compact against a closed Redis port")
			if reps := parseReports(t, r.Stdout); len(reps) != 1 || reps[0].Error == "" {
				t.Errorf("compact against a closed port should report an error: %s", r)
			}
			check("watcher compact", r.Stdout+r.Stderr)

			d := startDaemon(t, cfg, addr)
			// Not ready (both servers are unreachable), but serving.
			eventually(t, 15*time.Second, "/healthz", func() (bool, string) {
				code, _, err := d.Get("/healthz")
				return err == nil && code == 200, fmt.Sprint(code, err)
			})
			// Wait for a failed compaction of the redis target and for
			// both connection failures to show in /status.
			eventually(t, 30*time.Second, "failed compaction and unreachable servers in /status", func() (bool, string) {
				if d.Exited() {
					t.Fatalf("daemon exited:\n%s", d.Stderr())
				}
				code, body, err := d.Get("/status")
				if err != nil || code != 200 {
					return false, fmt.Sprint(code, err)
				}
				var doc struct {
					NATS    *struct{ Connected bool }  `json:"nats"`
					Redis   []struct{ Connected bool } `json:"redis"`
					Targets []struct {
						LastReport *struct{ Error string } `json:"last_report"`
					} `json:"targets"`
				}
				if err := json.Unmarshal([]byte(body), &doc); err != nil {
					return false, err.Error()
				}
				ok := doc.NATS != nil && !doc.NATS.Connected && len(doc.Redis) > 0 && !doc.Redis[0].Connected &&
					len(doc.Targets) == 1 && doc.Targets[0].LastReport != nil && doc.Targets[0].LastReport.Error != ""
				return ok, body
			})
			for _, p := range []string{"/status", "/metrics", "/readyz", "/healthz"} {
				_, body, err := d.Get(p)
				if err != nil {
					t.Fatal(err)
				}
				check(p, body)
			}
			rs := runWatcher(t, 30*time.Second, "status", "--addr", addr, "--json")
			check("watcher status --json", rs.Stdout+rs.Stderr)
			rs = runWatcher(t, 30*time.Second, "status", "--addr", addr)
			check("watcher status", rs.Stdout+rs.Stderr)
			d.Signal(syscall.SIGTERM)
			if code := d.Wait(20 * time.Second); code != 0 {
				t.Errorf("SIGTERM: exit %d", code)
			}
			log := d.Stderr()
			if !strings.Contains(log, "level=DEBUG") && !strings.Contains(log, "level=WARN") {
				t.Errorf("the daemon logged nothing at debug or warn level; the check proves little:\n%s", log)
			}
			check("daemon log (debug)", log)
		})
	}
}

// TestSecurityAbsurdConfigRefused: absurd values are refused by validate,
// compact and run with exit 2 and an error naming the key and the value.
func TestSecurityAbsurdConfigRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, body string
		want       []string
	}{
		{"max_files", baseConfig + `
[[target]]
name = "rot"
backend = "rotating"
path = "data/rot.ndjson"
max_bytes = 1000
max_files = 1000000000
[target.retention]
max_records = 5
`, []string{"max_files", "1000000000"}},
		{"max_concurrent", strings.Replace(baseConfig, "[policy]", "[policy]\nmax_concurrent = 100000", 1) + jsonTarget("events", "events.ndjson", 5),
			[]string{"max_concurrent", "100000"}},
		{"max_body_bytes", baseConfig + `
[nats]
url = "nats://127.0.0.1:4222"
max_body_bytes = 1000000000
` + jsonTarget("events", "events.ndjson", 5), []string{"max_body_bytes", "1000000000"}},
		{"negative max_records", baseConfig + jsonTarget("events", "events.ndjson", -1), []string{"max_records"}},
		{"burst", strings.Replace(baseConfig, "[policy]", "[policy]\nburst = 0", 1) + jsonTarget("events", "events.ndjson", 5),
			[]string{"burst"}},
		{"rate", strings.Replace(baseConfig, "[policy]", "[policy]\nrate = -3", 1) + jsonTarget("events", "events.ndjson", 5),
			[]string{"rate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writeConfig(t, dir, c.body)
			for _, args := range [][]string{{"validate", "--config", cfg}, {"compact", "--config", cfg}, {"run", "--config", cfg}} {
				r := runWatcher(t, 30*time.Second, args...)
				wantCode(t, r, 2, strings.Join(args[:1], " "))
				for _, w := range c.want {
					if !strings.Contains(r.Stderr, w) {
						t.Errorf("watcher %s: stderr does not name %q:\n%s", args[0], w, r.Stderr)
					}
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
				t.Errorf("a refused config created its state directory")
			}
		})
	}
}
