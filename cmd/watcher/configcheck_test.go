package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// problemsOf returns the problems of text as a config file, failing when
// it is valid.
func problemsOf(t *testing.T, text string) []string {
	t.Helper()
	_, warnings, err := parse(t, text)
	if err == nil {
		t.Fatalf("valid config, want problems:\n%s", text)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings %q returned with an invalid config", warnings)
	}
	ce, ok := err.(*ConfigError)
	if !ok {
		t.Fatalf("error %T %v, want a *ConfigError", err, err)
	}
	return ce.Problems
}

// TestConfigEveryTypeErrorInUserTerms: every value of the wrong type is
// reported in one pass, with its line, its key (and target) and what is
// allowed, in the terms of the file, not of Go.
func TestConfigEveryTypeErrorInUserTerms(t *testing.T) {
	problems := problemsOf(t, `[watcher]
log_level = 3

[policy]
max_concurrent = 1.5
debounce = 5

[[target]]
name = "events"
backend = "json"
path = "events.ndjson"
[target.retention]
max_records = 1.5
max_age_seconds = "1d"

[[target]]
name = "r"
backend = "redis"
url = "redis://127.0.0.1:6379/0"
approx_trim = "yes"
[target.triggers.timer]
jitter = 10
`)
	want := []string{
		`line 2: watcher.log_level: 3 is an integer; want a string`,
		`line 5: policy.max_concurrent: 1.5 is a float; want a whole number`,
		`line 6: policy.debounce: 5 is an integer; want a duration string such as "30s", "5m" or "6h"`,
		`line 13: target "events": retention.max_records: 1.5 is a float; want a whole number`,
		`line 14: target "events": retention.max_age_seconds: "1d" is a string; want a number`,
		`line 20: target "r": approx_trim: "yes" is a string; want true or false`,
		`line 22: target "r": triggers.timer.jitter: 10 is not a fraction from 0 to 1 (use a string such as "10%")`,
	}
	if strings.Join(problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range problems {
		for _, leak := range []string{"toml:", "struct field", "int64", "float64", "backends."} {
			if strings.Contains(p, leak) {
				t.Errorf("problem %q leaks Go internals (%q)", p, leak)
			}
		}
	}
}

// TestConfigUnknownKeysAndTables: unknown keys and tables with their line,
// and a suggestion or the keys allowed.
func TestConfigUnknownKeysAndTables(t *testing.T) {
	problems := problemsOf(t, `[policy]
debounse = "5s"

[bogus]
a = 1

[[target]]
name = "a"
backend = "memory"
colour = "blue"
[target.retention]
max_recs = 5
`)
	want := []string{
		`line 2: unknown key "policy.debounse" (did you mean "debounce"?)`,
		`line 4: unknown table [bogus] (top-level keys are nats, policy, target, triggers, watcher)`,
		`line 10: unknown key "target.colour" ([[target]] keys are approx_trim, backend, follow_symlinks, max_bytes, max_files, method, name, path, policy, prefix, retention, system_id, triggers, trim_unacked, url)`,
		`line 12: unknown key "target.retention.max_recs" ([target.retention] keys are max_age_seconds, max_records, max_total_bytes)`,
	}
	if strings.Join(problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
}

// TestConfigInlineAndDottedKeys: inline tables and dotted keys are checked
// like the tables they stand for.
func TestConfigInlineAndDottedKeys(t *testing.T) {
	problems := problemsOf(t, `[[target]]
name = "a"
backend = "json"
path = "a.ndjson"
retention = { max_records = 2.5 }
policy.cooldown = "soon"
`)
	want := []string{
		`line 5: target "a": retention.max_records: 2.5 is a float; want a whole number`,
		`line 6: target "a": policy.cooldown: "soon" is not a duration (use a string such as "30s", "5m", "6h")`,
	}
	if strings.Join(problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
	cfg, _, err := parse(t, "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\nretention = { max_records = 2 }\npolicy.cooldown = \"1m\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if *cfg.Targets[0].Retention.MaxRecords != 2 || cfg.Targets[0].Policy.Cooldown.Minutes() != 1 {
		t.Errorf("inline values not decoded: %+v", cfg.Targets[0])
	}
}

// TestConfigProblemsOnceAndAllAtOnce: a global problem is reported once,
// not once per target that inherits it; type errors and semantic problems
// come in one pass, in line order; a problem that follows from a value
// already reported is not reported again.
func TestConfigProblemsOnceAndAllAtOnce(t *testing.T) {
	problems := problemsOf(t, `[policy]
burst = 0
debounce = "5 parsecs"
max_wait = "1s"

[triggers.disk]
high_percent = 70
low_percent = 80

[[target]]
name = "a"
backend = "json"
path = "a.ndjson"

[[target]]
name = "b"
backend = "json"
path = "b.ndjson"
[target.policy]
burst = 2
cooldown = "1m"

[[target]]
name = 7
backend = "json"
path = "7.ndjson"

[[target]]
name = "c"
backend = "tape"
[target.policy]
burst = -1
`)
	want := []string{
		`line 2: policy.burst: 0 must be at least 1`,
		`line 3: policy.debounce: "5 parsecs" is not a duration (use a string such as "30s", "5m", "6h")`,
		`line 8: triggers.disk: need 0 < low_percent (80) < high_percent (70) <= 100`,
		`line 24: the 3rd [[target]] (line 23): name: 7 is an integer; want a string`,
		`line 30: target "c": backend "tape" is not one of json, rotating, redis, memory`,
		`line 32: target "c": policy.burst: -1 must be at least 1`,
	}
	if strings.Join(problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
}

// TestConfigRejectsWhatRunRejects: values the daemon refuses at start are
// refused by the config check (so by validate), with what is allowed.
func TestConfigRejectsWhatRunRejects(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, text, want string
	}{
		{"listen without port", "[watcher]\nhttp_listen = \"nonsense\"\n",
			`line 2: watcher.http_listen: "nonsense" is not HOST:PORT (such as "127.0.0.1:9464" or ":9464"; "" turns HTTP off)`},
		{"listen port out of range", "[watcher]\nhttp_listen = \"127.0.0.1:70000\"\n",
			`line 2: watcher.http_listen: "127.0.0.1:70000" has port "70000": want a number from 0 to 65535`},
		{"nats scheme", "[nats]\nurl = \"htp://x\"\n",
			`line 2: nats.url: htp://x: scheme "htp" is not one of nats://, tls://, ws://, wss://`},
		{"nats scheme in a list", "[nats]\nurl = \"nats://a:4222, http://b:4222\"\n",
			`line 2: nats.url: http://b:4222: scheme "http" is not one of nats://, tls://, ws://, wss://`},
		{"nats websocket mixed", "[nats]\nurl = \"ws://a:8080,nats://b:4222\"\n",
			`line 2: nats.url: websocket (ws://, wss://) and other URLs cannot be mixed`},
		{"nats port", "[nats]\nurl = \"nats://a:99999\"\n",
			`line 2: nats.url: nats://a:99999: port "99999" is not a number from 1 to 65535`},
		{"nats two auth methods", "[nats]\nurl = \"nats://a:4222\"\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n",
			`line 3: nats: token and user are set: set only one of token, user (with password), creds_file, nkey_seed_file`},
		{"nats password without user", "[nats]\nurl = \"nats://a:4222\"\npassword = \"p\"\n",
			`line 3: nats: password is set without user`},
		{"redis scheme", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"htp://x\"\n",
			`line 4: target "r": url: invalid redis url htp://x: scheme must be redis://, rediss:// or unix://`},
		{"redis port", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:99999/0\"\n",
			`line 4: target "r": url: invalid redis url redis://127.0.0.1:99999/0: port "99999" is not a number from 1 to 65535`},
		{"redis port not a number", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://:secret@h:port/0\"\n",
			`line 4: target "r": url: invalid redis url redis://:xxxxx@h:port/0: port "port" is not a number from 1 to 65535`},
		{"redis no host", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis:///0\"\n",
			`line 4: target "r": url: invalid redis url redis:///0: no host (want redis://HOST:PORT/DB)`},
		{"redis host", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://256.1.1.1:6379/0\"\n",
			`line 4: target "r": url: invalid redis url redis://256.1.1.1:6379/0: host "256.1.1.1" is not an IPv4 address`},
		{"redis db", "[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://h:6379/-1\"\n",
			`line 4: target "r": url: invalid redis url redis://h:6379/-1: database "-1" is not a database number (0, 1, 2, …)`},
		{"listen address not an IP", "[watcher]\nhttp_listen = \"256.1.1.1:80\"\n",
			`line 2: watcher.http_listen: "256.1.1.1:80" has host "256.1.1.1", which is not an IPv4 address (four numbers from 0 to 255, such as 10.0.0.7)`},
		{"listen address not IPv6", "[watcher]\nhttp_listen = \"[::g]:80\"\n",
			`line 2: watcher.http_listen: "[::g]:80" has host "::g", which is not an IPv6 address`},
		{"nats port not a number", "[nats]\nurl = \"nats://x:abc\"\n",
			`line 2: nats.url: nats://x:abc: port "abc" is not a number from 1 to 65535`},
		{"nats url shown without its password", "[nats]\nurl = \"nats://u:secret@[::1:4222\"\n",
			`line 2: nats.url: nats://u:xxxxx@[::1:4222: missing ']' in host`},
		{"nats host", "[nats]\nurl = \"nats://10.0.0.256:4222\"\n",
			`line 2: nats.url: nats://10.0.0.256:4222: host "10.0.0.256" is not an IPv4 address`},
		{"nats tls file not PEM", "[nats]\nurl = \"nats://a:4222\"\ntls_ca = \"" + filepath.Join(dir, "ca.pem") + "\"\n",
			`line 3: nats: invalid nats config: nats: failed to parse root certificate from "` + filepath.Join(dir, "ca.pem") + `"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate"), 0o600); err != nil {
				t.Fatal(err)
			}
			problems := problemsOf(t, c.text)
			if len(problems) != 1 || !strings.Contains(problems[0], c.want) {
				t.Errorf("problems %q, want one with %q", problems, c.want)
			}
			if strings.Contains(strings.Join(problems, "\n"), "secret") {
				t.Errorf("problems %q show the password", problems)
			}
		})
	}
	// And what run accepts is accepted.
	for _, text := range []string{
		"[watcher]\nhttp_listen = \":9464\"\n",
		"[watcher]\nhttp_listen = \"\"\n",
		"[watcher]\nhttp_listen = \"[::1]:0\"\n",
		"[watcher]\nhttp_listen = \"localhost:http\"\n",
		"[watcher]\nhttp_listen = \"0.0.0.0:9464\"\n",
		"[watcher]\nhttp_listen = \"[::]:9464\"\n",
		"[watcher]\nhttp_listen = \"node-1.example.com:9464\"\n",
		"[nats]\nurl = \"nats://10.0.0.7:4222,tls://[::1]:4443\"\n",
		"[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://redis-0.redis:6379/15\"\n[target.retention]\nmax_records = 1\n",
		"[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"unix:///run/redis.sock?db=3\"\n[target.retention]\nmax_records = 1\n",
		"[nats]\nurl = \"nats://a:4222, b:4222,tls://c\"\n",
		"[nats]\nurl = \"wss://a,ws://b:8080\"\n",
		"[nats]\nurl = \"nats://a:4222\"\nuser = \"u\"\npassword = \"p\"\n",
		"[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"unix:///run/redis.sock\"\n[target.retention]\nmax_records = 1\n",
		"[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"rediss://:pw@h:6380/2\"\n[target.retention]\nmax_records = 1\n",
	} {
		if _, _, err := parse(t, text); err != nil {
			t.Errorf("%q: %v", text, err)
		}
	}
}

// TestConfigWarnsOfMissingDirectories: a target path whose directory does
// not exist is a warning (Papyra may create it later), naming both; so is a
// NATS file that is not there (it may be mounted where the daemon runs).
func TestConfigWarnsOfMissingDirectories(t *testing.T) {
	dir := t.TempDir()
	text := "[[target]]\nname = \"events\"\nbackend = \"json\"\npath = \"nodir/events.ndjson\"\n[target.retention]\nmax_records = 5\n" +
		"[[target]]\nname = \"here\"\nbackend = \"json\"\npath = \"here.ndjson\"\n[target.retention]\nmax_records = 5\n" +
		"[nats]\nurl = \"nats://a:4222\"\ncreds_file = \"secret/nats.creds\"\n"
	_, warnings, err := ParseConfig(filepath.Join(dir, "c.toml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(warnings, "\n")
	for _, w := range []string{
		`target "events": the directory of path ` + filepath.Join(dir, "nodir", "events.ndjson") + ` does not exist (` + filepath.Join(dir, "nodir") + `)`,
		"nats.creds_file: stat " + filepath.Join(dir, "secret", "nats.creds") + ": no such file or directory: run refuses to start until it can be read",
	} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings %q lack %q", all, w)
		}
	}
	if strings.Contains(all, `target "here"`) {
		t.Errorf("a warning about a target whose directory exists: %q", all)
	}
}

// TestConfigNoWarningsWithErrors: warnings (some built from values that
// are themselves wrong) are not returned for an invalid file, so they
// never print before, or instead of, the errors.
func TestConfigNoWarningsWithErrors(t *testing.T) {
	_, warnings, err := parse(t, "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\n[target.retention]\nmax_age_seconds = -5\n")
	if err == nil || !strings.Contains(err.Error(), "max_age_seconds must not be negative") {
		t.Fatalf("err %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings with an invalid config: %q", warnings)
	}
}

// TestConfigEnvOverrides: the environment overrides the node and the NATS
// and Redis secrets, and a problem with such a value names the variable.
func TestConfigEnvOverrides(t *testing.T) {
	env := func(kv ...string) []string {
		var out []string
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, kv[i]+"="+kv[i+1])
		}
		return out
	}
	text := `[watcher]
node = "from-file"
[nats]
url = "nats://127.0.0.1:4222"
user = "watcher"
password = "file-password"
[[target]]
name = "events-eu"
backend = "redis"
url = "redis://app:file-pw@127.0.0.1:6379/0"
[target.retention]
max_records = 5
[[target]]
name = "audit"
backend = "redis"
url = "redis://127.0.0.1:6379/1"
[target.retention]
max_records = 5
`
	cfg, _, err := parseConfig("/etc/watcher/c.toml", []byte(text), env(
		"WATCHER_NODE", "node-7",
		"WATCHER_NATS_PASSWORD", "env-password",
		"WATCHER_REDIS_PASSWORD_EVENTS_EU", "eu-secret",
		"WATCHER_REDIS_PASSWORD", "shared-secret",
		"WATCHER_NATS_TOKEN", "", // empty: unset
	))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Watcher.Node != "node-7" || cfg.NATS.Password != "env-password" || cfg.NATS.Token != "" {
		t.Errorf("node %q, nats password %q, token %q", cfg.Watcher.Node, cfg.NATS.Password, cfg.NATS.Token)
	}
	if got := cfg.Targets[0].URL; got != "redis://app:eu-secret@127.0.0.1:6379/0" {
		t.Errorf("events-eu url %q", got)
	}
	if got := cfg.Targets[1].URL; got != "redis://:shared-secret@127.0.0.1:6379/1" {
		t.Errorf("audit url %q", got)
	}

	// Without the variables, the file's values.
	cfg, _, err = parseConfig("/etc/watcher/c.toml", []byte(text), env())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Watcher.Node != "from-file" || cfg.NATS.Password != "file-password" || cfg.Targets[0].URL != "redis://app:file-pw@127.0.0.1:6379/0" {
		t.Errorf("file values not kept: %+v %+v", cfg.Watcher, cfg.NATS)
	}

	// A bad value from the environment names the variable, without the
	// line of the file's value.
	_, _, err = parseConfig("/etc/watcher/c.toml", []byte(text), env("WATCHER_NODE", "a.b", "WATCHER_NATS_TOKEN", "tok"))
	if err == nil {
		t.Fatal("WATCHER_NODE=a.b accepted")
	}
	for _, w := range []string{
		`watcher.node (from WATCHER_NODE): "a.b" must not contain`,
		`nats: token (from WATCHER_NATS_TOKEN) and user are set`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "line 2: watcher.node") {
		t.Errorf("the environment's value is reported at the file's line: %v", err)
	}

	// The process environment is what ParseConfig applies.
	t.Setenv("WATCHER_NODE", "node-from-env")
	cfg, _, err = ParseConfig("/etc/watcher/c.toml", []byte("[watcher]\nnode = \"x\"\n"))
	if err != nil || cfg.Watcher.Node != "node-from-env" {
		t.Errorf("ParseConfig with WATCHER_NODE: %v %v", cfg, err)
	}
}

// TestConfigMessagesInUserTerms: what go-toml or Go would say is said in
// the file's terms: a number out of range names its key, a value of the
// wrong kind is shown as written, a target without a name is "the 1st
// [[target]]", and a retention limit is reported at its own line.
func TestConfigMessagesInUserTerms(t *testing.T) {
	for _, c := range []struct {
		name, text string
		want       []string
	}{
		{"float out of range", "[policy]\nrate = 1e400\n",
			[]string{`line 2: policy.rate: 1e400 is out of range (a number goes from about -1.8e308 to 1.8e308)`}},
		{"integer out of range, with other problems", "[policy]\nburst = 99_999_999_999_999_999_999\ncooldown = 5\n[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\n[target.retention]\nmax_records = 0x7fffffffffffffffff\n",
			[]string{
				`line 2: policy.burst: 99_999_999_999_999_999_999 is out of range (a whole number goes from -9223372036854775808 to 9223372036854775807)`,
				`line 3: policy.cooldown: 5 is an integer; want a duration string such as "30s", "5m" or "6h"`,
				`line 9: target "a": retention.max_records: 0x7fffffffffffffffff is out of range (a whole number goes from -9223372036854775808 to 9223372036854775807)`,
			}},
		{"array for a string", "[watcher]\nnode = [\"a\"]\n",
			[]string{`line 2: watcher.node: ["a"] is an array; want a string`}},
		{"table for a number", "[policy]\nrate = { per = \"hour\", n = [1, 2] }\n",
			[]string{`line 2: policy.rate: { per = "hour", n = [1, 2] } is a table; want a number`}},
		{"target without a name, and a duplicate", "[[target]]\nbackend = \"memory\"\n\n[[target]]\nname = \"a\"\nbackend = \"memory\"\n\n[[target]]\nname = \"a\"\nbackend = \"memory\"\n",
			[]string{
				`line 1: the 1st [[target]]: name is required`,
				`line 9: target "a": duplicate name: the 2nd [[target]] (line 4) has it too`,
			}},
		{"unnamed target's key", "[[target]]\nbackend = \"json\"\npath = \"a\"\nmax_files = \"2\"\n",
			[]string{
				`line 1: the 1st [[target]]: name is required`,
				`line 4: the 1st [[target]] (line 1): max_files: "2" is a string; want a whole number`,
			}},
		{"retention limits at their lines", "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\n[target.retention]\nmax_records = 5\nmax_age_seconds = -5\nmax_total_bytes = -1\n",
			[]string{
				`line 7: target "a": retention: max_age_seconds must not be negative, got -5`,
				`line 8: target "a": retention: max_total_bytes must not be negative, got -1`,
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			problems := problemsOf(t, c.text)
			if strings.Join(problems, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(c.want, "\n"))
			}
			for _, p := range problems {
				for _, leak := range []string{"strconv", "ParseFloat", "unable to parse", "target[", "<invalid url>", ":  is"} {
					if strings.Contains(p, leak) {
						t.Errorf("problem %q is not in the file's terms (%q)", p, leak)
					}
				}
			}
		})
	}
}

// TestConfigWarnsOfUnusedRedisPassword: a WATCHER_REDIS_PASSWORD_<TARGET>
// that names no redis target (a misspelt name) is a warning naming the
// variable and what the redis targets read; validate prints it.
func TestConfigWarnsOfUnusedRedisPassword(t *testing.T) {
	text := "[[target]]\nname = \"streams\"\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n[target.retention]\nmax_records = 5\n" +
		"[[target]]\nname = \"events-eu\"\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/1\"\n[target.retention]\nmax_records = 5\n" +
		"[[target]]\nname = \"local\"\nbackend = \"memory\"\n"
	_, warnings, err := parseConfig("/etc/watcher/c.toml", []byte(text), []string{
		"WATCHER_REDIS_PASSWORD_STREEMS=x",
		"WATCHER_REDIS_PASSWORD_STREAMS=y",   // read by "streams"
		"WATCHER_REDIS_PASSWORD_EVENTS_EU=z", // read by "events-eu"
		"WATCHER_REDIS_PASSWORD_LOCAL=w",     // "local" is not a redis target
		"WATCHER_REDIS_PASSWORD_EMPTY=",      // empty: unset
		"WATCHER_REDIS_PASSWORD=shared",      // the default for every redis target
	})
	if err != nil {
		t.Fatal(err)
	}
	reads := `target "streams" reads WATCHER_REDIS_PASSWORD_STREAMS; target "events-eu" reads WATCHER_REDIS_PASSWORD_EVENTS_EU`
	want := []string{
		`WATCHER_REDIS_PASSWORD_LOCAL is set but no redis target reads it (target "local" is a memory target, not a redis one; ` + reads + `)`,
		`WATCHER_REDIS_PASSWORD_STREEMS is set but no redis target reads it (` + reads + `)`,
	}
	var got []string
	for _, w := range warnings {
		if strings.HasPrefix(w, "WATCHER_") {
			got = append(got, w)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Without a redis target.
	_, warnings, err = parseConfig("/etc/watcher/c.toml", []byte("[[target]]\nname = \"m\"\nbackend = \"memory\"\n"),
		[]string{"WATCHER_REDIS_PASSWORD_STREEMS=x"})
	if err != nil {
		t.Fatal(err)
	}
	if w := `WATCHER_REDIS_PASSWORD_STREEMS is set but no redis target reads it (there is no redis target)`; !slices.Contains(warnings, w) {
		t.Errorf("warnings %q lack %q", warnings, w)
	}

	// validate prints it, from the process environment.
	cfg := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WATCHER_REDIS_PASSWORD_STREEMS", "x")
	var out, errb strings.Builder
	if code := mainWith([]string{"validate", cfg}, &out, &errb); code != 0 {
		t.Fatalf("validate: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "warning: WATCHER_REDIS_PASSWORD_STREEMS is set but no redis target reads it") {
		t.Errorf("validate output %q", errb.String())
	}
}
