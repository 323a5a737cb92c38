package executor

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// alertsFile is the shipped Prometheus rules file.
const alertsFile = "../deploy/prometheus/alerts.yml"

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatalf("read %s: %v", alertsFile, err)
	}
	var f ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("parse %s: %v", alertsFile, err)
	}
	var rules []rule
	for _, g := range f.Groups {
		if g.Name == "" {
			t.Errorf("%s: a group without a name", alertsFile)
		}
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s: no rules", alertsFile)
	}
	return rules
}

var (
	promqlString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promqlRange    = regexp.MustCompile(`\[[^\]]*\]`)
	// A label list after a grouping or matching keyword: on (a, b).
	promqlLabelList = regexp.MustCompile(`\b(?:on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlKeywords  = []string{"and", "or", "unless", "bool", "offset", "on", "ignoring", "by", "without",
		"group_left", "group_right", "atan2", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev",
		"stdvar", "topk", "bottomk", "quantile", "count_values", "group"}
)

// metricNames returns the metric names an expression selects: identifiers
// that are not functions, keywords, label names or inside strings.
func metricNames(expr string) []string {
	s := promqlString.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlRange.ReplaceAllString(s, " ")
	s = promqlLabelList.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the unit or exponent of a number or duration: 15m, 1e3
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue // a function call
		}
		if slices.Contains(promqlKeywords, strings.ToLower(id)) {
			continue
		}
		if !slices.Contains(names, id) {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNamesExtractor(t *testing.T) {
	got := metricNames(`(increase(papyra_compactor_a_total{job="x", target=~"e.*"}[15m]) > 0
		unless on (instance, target) papyra_compactor_b) and on(instance) (time() - process_start_time_seconds > 4.3e4)
		or sum by (target) (rate(papyra_compactor_c_bucket[5m] offset 1h)) or up == bool 0`)
	want := []string{"papyra_compactor_a_total", "papyra_compactor_b", "process_start_time_seconds",
		"papyra_compactor_c_bucket", "up"}
	if !slices.Equal(got, want) {
		t.Errorf("metricNames = %q, want %q", got, want)
	}
}

func TestAlertRules(t *testing.T) {
	m := populatedMetrics(t)
	exported := map[string]bool{}
	for name, mf := range gathered(t, m) {
		exported[name] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[name+suffix] = true
			}
		}
	}
	// Series Prometheus itself adds to every scrape.
	synthetic := map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true}

	used := map[string]bool{}
	seen := map[string]bool{}
	for _, r := range loadRules(t) {
		name := r.Alert
		if name == "" {
			t.Errorf("rule without alert (record %q): this file holds alerting rules only", r.Record)
			continue
		}
		if seen[name] {
			t.Errorf("alert %s defined twice", name)
		}
		seen[name] = true
		if strings.TrimSpace(r.Expr) == "" {
			t.Errorf("alert %s: no expr", name)
		}
		switch r.Labels["severity"] {
		case "critical", "warning", "info":
		default:
			t.Errorf("alert %s: labels.severity is %q, want critical, warning or info", name, r.Labels["severity"])
		}
		if strings.TrimSpace(r.Annotations["summary"]) == "" {
			t.Errorf("alert %s: no annotations.summary", name)
		}
		if strings.TrimSpace(r.Annotations["description"]) == "" {
			t.Errorf("alert %s: no annotations.description", name)
		}
		if r.For != "" {
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("alert %s: for %q: %v", name, r.For, err)
			}
		}
		names := metricNames(r.Expr)
		if len(names) == 0 {
			t.Errorf("alert %s: expr %q uses no metric", name, r.Expr)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] && !synthetic[n] {
				t.Errorf("alert %s uses %s, which the watcher does not export (renamed?)", name, n)
			}
		}
	}
	// The rules the operability issue asks for.
	for _, n := range []string{
		"papyra_compactor_compaction_errors_total", "papyra_compactor_last_success_timestamp_seconds",
		"papyra_compactor_disk_used_ratio", "papyra_compactor_target_stuck",
		"papyra_compactor_nats_connected", "up",
	} {
		if !used[n] {
			t.Errorf("no alert uses %s", n)
		}
	}
}

// TestAlertRulesPromtool checks the rules and runs their unit tests
// (alerts_test.yml) with promtool.
func TestAlertRulesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool not found: install it (Debian: apt-get install prometheus) to check %s", alertsFile)
		}
		t.Skip("promtool not found: install the prometheus package (apt-get install prometheus) to run this test")
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
