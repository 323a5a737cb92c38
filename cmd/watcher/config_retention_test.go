package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// retentionWarningsOf parses text and returns its warnings that are about
// keeping retention, by target name.
func retentionWarningsOf(t *testing.T, text string) map[string][]string {
	t.Helper()
	_, warnings, err := parse(t, text)
	if err != nil {
		t.Fatalf("config refused: %v", err)
	}
	out := map[string][]string{}
	for _, w := range warnings {
		if !strings.Contains(w, "retention cannot be kept") && !strings.Contains(w, "retention interval") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(w, `target "`), `"`)
		out[name] = append(out[name], w)
	}
	return out
}

func TestValidateRetentionWarnings(t *testing.T) {
	const jsonTarget = "[[target]]\nname = %q\nbackend = \"json\"\npath = \"%s.ndjson\"\n"
	target := func(name, extra string) string {
		return strings.ReplaceAll(strings.ReplaceAll(jsonTarget, "%q", `"`+name+`"`), "%s", name) + extra
	}
	cases := []struct {
		name string
		text string
		want map[string][]string // target → substrings, one warning each; absent: no warning
	}{
		{"defaults keep retention", target("a", "[target.retention]\nmax_age_seconds = 604800\n"), nil},
		{"defaults, count limit only", target("a", "[target.retention]\nmax_records = 10\n"), nil},
		{"cooldown longer than max_age_seconds",
			"[policy]\nrate = 0\n" + target("a", "[target.retention]\nmax_age_seconds = 60\n[target.policy]\ncooldown = \"2m\"\n[target.triggers.timer]\ninterval = \"30s\"\n") +
				target("b", "[target.retention]\nmax_age_seconds = 600\n[target.policy]\ncooldown = \"2m\"\n"),
			map[string][]string{"a": {"cooldown 2m0s is longer than max_age_seconds (60s)"}}},
		{"cooldown equal to max_age_seconds is kept",
			"[policy]\nrate = 0\n" + target("a", "[target.retention]\nmax_age_seconds = 60\n[target.policy]\ncooldown = \"1m\"\n[target.triggers.timer]\ninterval = \"30s\"\n"), nil},
		{"rate too slow for the age limits of all targets",
			"[policy]\nrate = 30\n[triggers.timer]\ninterval = \"10s\"\n" +
				target("a", "[target.retention]\nmax_age_seconds = 180\n") + // 20/h
				target("b", "[target.retention]\nmax_age_seconds = 240\n") + // 15/h
				target("c", "[target.retention]\nmax_records = 5\n"), // no age: needs nothing, warned about nothing
			map[string][]string{
				"a": {"need about 35 compactions per hour, more than rate = 30"},
				"b": {"need about 35 compactions per hour, more than rate = 30"},
			}},
		{"rate enough",
			"[policy]\nrate = 40\n[triggers.timer]\ninterval = \"10s\"\n" +
				target("a", "[target.retention]\nmax_age_seconds = 180\n") +
				target("b", "[target.retention]\nmax_age_seconds = 240\n"), nil},
		{"rate 0 is unlimited",
			"[policy]\nrate = 0\ncooldown = \"1s\"\n[triggers.timer]\ninterval = \"0s\"\n[triggers.retention]\ninterval = \"1s\"\nage_slack = \"1s\"\n" +
				target("a", "[target.retention]\nmax_age_seconds = 5\n"), nil},
		{"retention and timer off: a file target only compacts on growth",
			"[triggers.retention]\ninterval = \"0s\"\n[triggers.timer]\ninterval = \"0s\"\n" + target("a", "[target.retention]\nmax_records = 5\n"),
			map[string][]string{"a": {"only growth compacts this target"}}},
		{"growth at its most eager (0 and 0) is still growth",
			"[triggers.retention]\ninterval = \"0s\"\n[triggers.timer]\ninterval = \"0s\"\n[triggers.growth]\nmin_bytes = 0\nmin_ratio = 0.0\n" +
				target("a", "[target.retention]\nmax_records = 5\n"),
			map[string][]string{"a": {"only growth compacts this target"}}},
		{"retention off, timer on: no warning",
			"[triggers.retention]\ninterval = \"0s\"\n" + target("a", "[target.retention]\nmax_records = 5\n"), nil},
		{"timer off, retention on: no warning",
			"[policy]\nrate = 0\n[triggers.timer]\ninterval = \"0s\"\n" + target("a", "[target.retention]\nmax_age_seconds = 60\n"), nil},
		{"per-target override turns both off for one target",
			target("a", "[target.retention]\nmax_records = 5\n[target.triggers.retention]\ninterval = \"0s\"\n[target.triggers.timer]\ninterval = \"0s\"\n") +
				target("b", "[target.retention]\nmax_records = 5\n"),
			map[string][]string{"a": {"only growth compacts this target"}}},
		{"redis target with retention and timer off: nothing compacts it",
			"[triggers.retention]\ninterval = \"0s\"\n[triggers.timer]\ninterval = \"0s\"\n" +
				"[[target]]\nname = \"r\"\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n[target.retention]\nmax_records = 5\n",
			map[string][]string{"r": {"nothing else compacts this target routinely"}}},
		{"no retention: nothing to keep",
			"[triggers.retention]\ninterval = \"0s\"\n[triggers.timer]\ninterval = \"0s\"\n" + target("a", ""), nil},
		{"retention interval longer than max_age_seconds",
			"[policy]\nrate = 0\n[triggers.retention]\ninterval = \"2m\"\n[triggers.timer]\ninterval = \"30s\"\n" + target("a", "[target.retention]\nmax_age_seconds = 60\n"),
			map[string][]string{"a": {"the retention interval 2m0s is longer than max_age_seconds (60s)"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := retentionWarningsOf(t, c.text)
			for name, ws := range got {
				if len(c.want[name]) != len(ws) {
					t.Errorf("target %s: warnings %q, want %d matching %q", name, ws, len(c.want[name]), c.want[name])
				}
			}
			for name, subs := range c.want {
				ws := got[name]
				if len(ws) != len(subs) {
					t.Errorf("target %s: warnings %q, want %d matching %q", name, ws, len(subs), subs)
					continue
				}
				for i, s := range subs {
					if !strings.Contains(ws[i], s) {
						t.Errorf("target %s: warning %q lacks %q", name, ws[i], s)
					}
				}
			}
		})
	}
}

// TestAgeSlack: age_slack is a duration or a percentage of max_age_seconds,
// at least 1 s, in [triggers.retention] or a target's override; anything
// else is refused with an error naming the key.
func TestAgeSlack(t *testing.T) {
	const target = "[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a.ndjson\"\n[target.retention]\nmax_age_seconds = %s\n"
	cfgText := func(global, maxAge, override string) string {
		s := ""
		if global != "" {
			s = "[triggers.retention]\nage_slack = \"" + global + "\"\n"
		}
		s += strings.Replace(target, "%s", maxAge, 1)
		if override != "" {
			s += "[target.triggers.retention]\nage_slack = \"" + override + "\"\n"
		}
		return s
	}
	for _, c := range []struct {
		global, maxAge, override string
		want                     time.Duration
	}{
		{"", "3600", "", 360 * time.Second}, // the default, 10 %
		{"25%", "100", "", 25 * time.Second},
		{"0.5%", "1000", "", 5 * time.Second},
		{"10%", "5", "", time.Second}, // 0.5 s: the floor
		{"0%", "3600", "", time.Second},
		{"2m", "60", "", 2 * time.Minute},
		{"250ms", "60", "", time.Second},
		{"0s", "60", "", time.Second},
		{"2m", "600", "50%", 300 * time.Second}, // the target's own wins
		{"50%", "600", "3s", 3 * time.Second},
	} {
		name := fmt.Sprintf("%s/%s/%s", c.global, c.maxAge, c.override)
		cfg, _, err := parse(t, cfgText(c.global, c.maxAge, c.override))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := triggerTarget(cfg.Targets[0]).Retention.AgeSlack; got != c.want {
			t.Errorf("%s: age slack %v, want %v", name, got, c.want)
		}
	}
	// No age limit: no slack.
	cfg, _, err := parse(t, "[triggers.retention]\nage_slack = \"1m\"\n[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a.ndjson\"\n[target.retention]\nmax_records = 5\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := triggerTarget(cfg.Targets[0]).Retention.AgeSlack; got != 0 {
		t.Errorf("without max_age_seconds: slack %v", got)
	}

	for _, c := range []struct{ global, override, want string }{
		{"150%", "", "age_slack"},
		{"soon", "", `"soon" is neither a duration nor a percentage`},
		{"-5%", "", "age_slack"},
		{"", "ten percent", "age_slack"},
	} {
		_, _, err := parse(t, cfgText(c.global, "60", c.override))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("age_slack %q/%q: error %v, want one naming %q", c.global, c.override, err, c.want)
		}
	}

	// The percentage form survives a round trip (watcher config prints it).
	for _, in := range []string{"10%", "2.5%", "1m30s"} {
		var s Slack
		if err := s.UnmarshalText([]byte(in)); err != nil {
			t.Fatal(err)
		}
		out, _ := s.MarshalText()
		var back Slack
		if err := back.UnmarshalText(out); err != nil || back != s {
			t.Errorf("%q → %q → %+v, want %+v", in, out, back, s)
		}
	}
}
