package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/triggers"
)

func parse(t *testing.T, text string) (*Config, []string, error) {
	t.Helper()
	return ParseConfig("/etc/watcher/watcher.toml", []byte(text))
}

func TestShippedConfigIsValid(t *testing.T) {
	cfg, warnings, err := LoadConfig("../../config.toml")
	if err != nil {
		t.Fatalf("shipped config.toml: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("shipped config.toml has warnings: %q", warnings)
	}
	if len(cfg.Targets) == 0 {
		t.Fatal("shipped config.toml has no targets")
	}
	root, _ := filepath.Abs("../..")
	for _, tc := range cfg.Targets {
		if tc.Backend == "redis" {
			t.Errorf("shipped config must run without Redis, has redis target %q", tc.Name)
		}
		if tc.Path != "" && !strings.HasPrefix(tc.Path, filepath.Join(root, "data")) {
			t.Errorf("target %q path %s is not under the repo's data/", tc.Name, tc.Path)
		}
	}
	if cfg.NATS.URL != "" {
		t.Error("shipped config must run without NATS")
	}
}

func TestConfigDefaultsAndOverrides(t *testing.T) {
	cfg, _, err := parse(t, `
[policy]
debounce = "2s"
[[target]]
name = "a"
backend = "json"
path = "data/a.ndjson"
[target.retention]
max_records = 10
[target.policy]
cooldown = "1m"
[target.triggers.growth]
min_bytes = 1024
[[target]]
name = "b"
backend = "rotating"
path = "/var/lib/papyra/b.log"
max_bytes = 100
max_files = 3
[target.retention]
max_age_seconds = 60.5
`)
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Targets[0], cfg.Targets[1]
	if a.Path != "/etc/watcher/data/a.ndjson" {
		t.Errorf("relative path not resolved against the config dir: %s", a.Path)
	}
	if cfg.Watcher.StateDir != "/etc/watcher/.watcher" {
		t.Errorf("state_dir = %s", cfg.Watcher.StateDir)
	}
	if a.Policy.Debounce.Duration != 2*time.Second || a.Policy.Cooldown.Duration != time.Minute {
		t.Errorf("a policy: debounce %s cooldown %s", a.Policy.Debounce, a.Policy.Cooldown)
	}
	if b.Policy.Cooldown.Duration != 30*time.Second || b.Policy.MaxWait.Duration != time.Minute {
		t.Errorf("b policy: cooldown %s max_wait %s", b.Policy.Cooldown, b.Policy.MaxWait)
	}
	if *a.Triggers.Growth.MinBytes != 1024 || *b.Triggers.Growth.MinBytes != 64<<20 {
		t.Errorf("growth min_bytes a=%d b=%d", *a.Triggers.Growth.MinBytes, *b.Triggers.Growth.MinBytes)
	}
	if *a.Triggers.Timer.Jitter != 0.1 || a.Triggers.Timer.Interval.Duration != 6*time.Hour {
		t.Errorf("timer defaults: %v %v", *a.Triggers.Timer.Jitter, a.Triggers.Timer.Interval)
	}
	if *b.Retention.MaxAgeSeconds != 60.5 || *a.Retention.MaxRecords != 10 {
		t.Error("retention not decoded")
	}
	if *cfg.Triggers.RedisMemory.HighPercent != 80 || *cfg.Triggers.RedisMemory.LowPercent != 70 {
		t.Error("redis_memory defaults")
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, text string
		want       []string
	}{
		{"unknown key with line", "[watcher]\nstate_dir = \"x\"\nbogus = 1\n", []string{"line 3", `unknown key "watcher.bogus"`}},
		{"unknown target key", "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\nmax_record = 5\n", []string{"line 5", "target.max_record"}},
		{"type error", "[policy]\nmax_concurrent = \"two\"\n", []string{"line 2", "max_concurrent"}},
		{"bad duration", "[policy]\ndebounce = \"5 parsecs\"\n", []string{"line 2", "not a duration"}},
		{"bad percent", "[triggers.timer]\njitter = \"150%\"\n", []string{"percentage"}},
		{"duplicate names", "[[target]]\nname = \"a\"\nbackend = \"memory\"\n[[target]]\nname = \"a\"\nbackend = \"memory\"\n", []string{"duplicate name"}},
		{"missing path", "[[target]]\nname = \"a\"\nbackend = \"json\"\n", []string{`target "a": json backend needs path`}},
		{"rotating without limits", "[[target]]\nname = \"r\"\nbackend = \"rotating\"\npath = \"r.log\"\n", []string{"needs max_bytes", "needs max_files"}},
		{"absurd max_files", "[[target]]\nname = \"r\"\nbackend = \"rotating\"\npath = \"r.log\"\nmax_bytes = 10\nmax_files = 1000000000\n", []string{"max_files between 1 and 10000"}},
		{"negative retention", "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a\"\n[target.retention]\nmax_records = -1\n", []string{"max_records must not be negative"}},
		{"negative duration", "[policy]\ncooldown = \"-5s\"\n", []string{"must not be negative"}},
		{"unknown backend", "[[target]]\nname = \"a\"\nbackend = \"sqlite\"\n", []string{`backend "sqlite" is not one of`}},
		{"redis without url", "[[target]]\nname = \"s\"\nbackend = \"redis\"\n", []string{"needs url"}},
		{"watermarks", "[triggers.disk]\nhigh_percent = 70\nlow_percent = 80\n", []string{"low_percent (80) < high_percent (70)"}},
		{"bad name", "[[target]]\nname = \"../etc\"\nbackend = \"memory\"\n", []string{"name may only contain"}},
		{"same path twice", "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"x\"\n[[target]]\nname = \"b\"\nbackend = \"json\"\npath = \"./x\"\n", []string{"also the path of target"}},
		{"syntax", "[watcher\n", []string{"line 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := parse(t, c.text)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "/etc/watcher/watcher.toml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestConfigWarnings(t *testing.T) {
	_, warnings, err := parse(t, `
[[target]]
name = "noret"
backend = "json"
path = "a"
[[target]]
name = "slowtimer"
backend = "json"
path = "b"
[target.retention]
max_age_seconds = 3600
`)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(warnings, "\n")
	for _, w := range []string{`target "noret": no retention`, `target "slowtimer": the timer interval 6h0m0s is longer than max_age_seconds`} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings %q lack %q", all, w)
		}
	}
}

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a.ndjson\"\n"), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[[target]]\nname = \"a\"\nbackend = \"json\"\npathh = \"a.ndjson\"\n"), 0o644)
	var out, errb strings.Builder
	if code := mainWith([]string{"validate", "--config", good}, &out, &errb); code != 0 {
		t.Fatalf("valid config: exit %d, %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "no retention") {
		t.Errorf("validate does not print the static warning: %q", errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := mainWith([]string{"validate", "--config", bad}, &out, &errb); code != 2 {
		t.Fatalf("invalid config: exit %d", code)
	}
	if !strings.Contains(errb.String(), `line 4: unknown key "target.pathh"`) {
		t.Errorf("validate output %q", errb.String())
	}
}

func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("../../config.toml"); err == nil {
		f.Add(string(b))
	}
	f.Add("[[target]]\nname = \"a\"\nbackend = \"rotating\"\npath = \"r\"\nmax_bytes = 1\nmax_files = 2\n")
	f.Add("[policy]\ndebounce = \"1s\"\nmax_wait = \"0s\"\n")
	f.Fuzz(func(t *testing.T, text string) {
		cfg, _, err := ParseConfig("/x/c.toml", []byte(text))
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}

func TestConfigValueErrorsHaveLineAndKey(t *testing.T) {
	for _, v := range []string{`"5 seconds"`, `5`} {
		_, _, err := parse(t, "[watcher]\nnode = \"n\"\n\n[policy]\ndebounce = "+v+"  # comment\n")
		if err == nil || !strings.Contains(err.Error(), "line 5: policy.debounce: ") {
			t.Errorf("%s: %v", v, err)
		}
	}
	_, _, err := parse(t, "[[target]]\nname = \"a\"\nbackend = \"memory\"\n[target.triggers.timer]\njitter = \"300%\"\n")
	if err == nil || !strings.Contains(err.Error(), `line 5: target "a": triggers.timer.jitter: `) {
		t.Errorf("jitter: %v", err)
	}
}

func TestHTTPListenDefaultAndOff(t *testing.T) {
	cfg, _, err := parse(t, "[watcher]\nnode = \"n\"\n")
	if err != nil || *cfg.Watcher.HTTPListen != "127.0.0.1:9464" {
		t.Fatalf("absent http_listen: %v %v", err, cfg)
	}
	cfg, _, err = parse(t, "[watcher]\nhttp_listen = \"\"\n")
	if err != nil || *cfg.Watcher.HTTPListen != "" {
		t.Fatalf("http_listen = \"\" must turn HTTP off: %v", err)
	}
}

// TestConfigSubjectPrefixAsTheNATSTrigger: the config accepts exactly the
// subject prefixes the NATS trigger starts with, so `watcher validate`
// does not pass a config that `watcher run` refuses.
func TestConfigSubjectPrefixAsTheNATSTrigger(t *testing.T) {
	// TOML basic strings: "a\tb" is a tab.
	cases := []struct {
		toml, prefix, why string
	}{
		{`a..b`, "a..b", "empty token"},
		{`papyra..compaction`, "papyra..compaction", "empty token"},
		{`.a`, ".a", "starts with '.'"},
		{`a.`, "a.", "ends with '.'"},
		{`.`, ".", "starts with '.'"},
		{`a.*`, "a.*", "wildcard"},
		{`a.>`, "a.>", "wildcard"},
		{`a b`, "a b", "whitespace"},
		{`a\tb`, "a\tb", "whitespace"},
		{`a\nb`, "a\nb", "whitespace"},
		{`papyra.compaction`, "papyra.compaction", ""},
		{`a`, "a", ""},
		{`my-fleet.papyra_v2.compaction`, "my-fleet.papyra_v2.compaction", ""},
	}
	for _, c := range cases {
		t.Run(c.toml, func(t *testing.T) {
			_, runErr := triggers.NewNATS(triggers.NATSConfig{URL: "nats://127.0.0.1:4222", SubjectPrefix: c.prefix, Node: "n"}, nil, nil)
			text := "[watcher]\nnode = \"n\"\n\n[nats]   # comment\nurl = \"\"\nsubject_prefix = \"" + c.toml + "\"  # comment\n"
			cfg, _, err := parse(t, text)
			if c.why == "" {
				if err != nil || runErr != nil {
					t.Fatalf("valid prefix %q: config %v, NATS trigger %v", c.prefix, err, runErr)
				}
				if cfg.NATS.SubjectPrefix != c.prefix {
					t.Errorf("subject_prefix = %q, want %q", cfg.NATS.SubjectPrefix, c.prefix)
				}
				return
			}
			if runErr == nil {
				t.Fatalf("the NATS trigger accepts %q", c.prefix)
			}
			if err == nil {
				t.Fatalf("config accepts %q, which the NATS trigger refuses: %v", c.prefix, runErr)
			}
			for _, w := range []string{
				"line 6: nats.subject_prefix: " + fmt.Sprintf("%q", c.prefix), c.why,
				"want one or more non-empty tokens separated by '.', without whitespace, '*' or '>'",
			} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// The validate command says so, with exit status 2.
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[nats]\nsubject_prefix = \"a..b\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	if code := mainWith([]string{"validate", "--config", bad}, &out, &errb); code != 2 {
		t.Fatalf("validate a..b: exit %d, stdout %q", code, out.String())
	}
	if !strings.Contains(errb.String(), `line 2: nats.subject_prefix: "a..b" has an empty token`) {
		t.Errorf("validate output %q", errb.String())
	}
}
