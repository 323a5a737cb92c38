package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The schedules of one-shot compaction (Papyra's docs recommend cron,
// Kubernetes CronJobs, Nomad periodic jobs and systemd timers) all run
// `watcher compact` every 6 hours at minute 17.
const scheduleCron = "17 */6 * * *"

func TestKustomizeBuild(t *testing.T) {
	// The DaemonSet: in the namespace its kustomization creates.
	docs := kustomize(t, "kubernetes")
	var ns string
	kinds := map[string]bool{}
	for _, d := range docs {
		kinds[str(d, "kind")] = true
		if str(d, "kind") == "Namespace" {
			ns = str(d, "metadata", "name")
		}
	}
	if ns == "" {
		t.Fatal("kubernetes/: no Namespace: the DaemonSet's namespace must be created (or not assumed)")
	}
	for _, d := range docs {
		if k := str(d, "kind"); k != "Namespace" && str(d, "metadata", "namespace") != ns {
			t.Errorf("kubernetes/: %s %s is in namespace %q, not the created %q", k, str(d, "metadata", "name"),
				str(d, "metadata", "namespace"), ns)
		}
	}
	for _, k := range []string{"ConfigMap", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("kubernetes/: no %s", k)
		}
	}

	// The CronJob: in the namespace of Papyra's PVC, which it does not
	// create and does not name (kubectl apply -k … -n NS).
	docs = kustomize(t, "kubernetes/cronjob")
	kinds = map[string]bool{}
	for _, d := range docs {
		kinds[str(d, "kind")] = true
		if n := str(d, "metadata", "namespace"); n != "" {
			t.Errorf("kubernetes/cronjob: %s %s names namespace %q: it belongs in the PVC's", str(d, "kind"),
				str(d, "metadata", "name"), n)
		}
	}
	if !kinds["CronJob"] || !kinds["ConfigMap"] || kinds["Namespace"] || kinds["DaemonSet"] {
		t.Errorf("kubernetes/cronjob kinds %v, want a CronJob and its ConfigMap only", kinds)
	}
}

type cronJob struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Spec       struct {
		Schedule          string `yaml:"schedule"`
		TimeZone          string `yaml:"timeZone"`
		ConcurrencyPolicy string `yaml:"concurrencyPolicy"`
		JobTemplate       struct {
			Spec struct {
				BackoffLimit          *int `yaml:"backoffLimit"`
				ActiveDeadlineSeconds int  `yaml:"activeDeadlineSeconds"`
				PodFailurePolicy      struct {
					Rules []struct {
						Action      string `yaml:"action"`
						OnExitCodes struct {
							ContainerName string `yaml:"containerName"`
							Operator      string `yaml:"operator"`
							Values        []int  `yaml:"values"`
						} `yaml:"onExitCodes"`
					} `yaml:"rules"`
				} `yaml:"podFailurePolicy"`
				Template struct {
					Spec struct {
						RestartPolicy   string `yaml:"restartPolicy"`
						SecurityContext struct {
							RunAsNonRoot   *bool `yaml:"runAsNonRoot"`
							RunAsUser      int   `yaml:"runAsUser"`
							SeccompProfile struct {
								Type string `yaml:"type"`
							} `yaml:"seccompProfile"`
						} `yaml:"securityContext"`
						Containers []container `yaml:"containers"`
						Volumes    []struct {
							Name      string `yaml:"name"`
							ConfigMap *struct {
								Name string `yaml:"name"`
							} `yaml:"configMap"`
							PersistentVolumeClaim *struct {
								ClaimName string `yaml:"claimName"`
							} `yaml:"persistentVolumeClaim"`
						} `yaml:"volumes"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		} `yaml:"jobTemplate"`
	} `yaml:"spec"`
}

type configMap struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
}

// cronJobConfig is the config the CronJob's ConfigMap holds.
func cronJobConfig(t *testing.T) string {
	t.Helper()
	var cm configMap
	k8sDoc(t, "kubernetes/cronjob/configmap.yaml", &cm)
	if cm.Kind != "ConfigMap" || cm.Data["config.toml"] == "" {
		t.Fatalf("kubernetes/cronjob/configmap.yaml: kind %s, no config.toml", cm.Kind)
	}
	return cm.Data["config.toml"]
}

func TestKubernetesCronJob(t *testing.T) {
	var cj cronJob
	k8sDoc(t, "kubernetes/cronjob/cronjob.yaml", &cj)
	if cj.APIVersion != "batch/v1" || cj.Kind != "CronJob" {
		t.Fatalf("%s %s, want batch/v1 CronJob", cj.APIVersion, cj.Kind)
	}
	if cj.Spec.Schedule != scheduleCron {
		t.Errorf("schedule %q, want %q like the other schedules", cj.Spec.Schedule, scheduleCron)
	}
	checkCron(t, "CronJob", cj.Spec.Schedule)
	if cj.Spec.TimeZone == "" {
		t.Errorf("no timeZone: the schedule would follow the controller manager's")
	}
	if cj.Spec.ConcurrencyPolicy != "Forbid" {
		t.Errorf("concurrencyPolicy %q, want Forbid", cj.Spec.ConcurrencyPolicy)
	}
	job := cj.Spec.JobTemplate.Spec
	if job.ActiveDeadlineSeconds <= 0 || job.BackoffLimit == nil {
		t.Errorf("the Job needs activeDeadlineSeconds and backoffLimit")
	}
	// Exit 2 (bad config or usage) fails the Job at once.
	if !slices.ContainsFunc(job.PodFailurePolicy.Rules, func(r struct {
		Action      string `yaml:"action"`
		OnExitCodes struct {
			ContainerName string `yaml:"containerName"`
			Operator      string `yaml:"operator"`
			Values        []int  `yaml:"values"`
		} `yaml:"onExitCodes"`
	}) bool {
		return r.Action == "FailJob" && r.OnExitCodes.Operator == "In" && slices.Contains(r.OnExitCodes.Values, 2) &&
			r.OnExitCodes.ContainerName == "watcher"
	}) {
		t.Errorf("podFailurePolicy: no FailJob rule for exit code 2 of container watcher")
	}
	pod := job.Template.Spec
	if pod.RestartPolicy != "Never" {
		t.Errorf("restartPolicy %q, want Never (podFailurePolicy needs it)", pod.RestartPolicy)
	}
	if nr := pod.SecurityContext.RunAsNonRoot; nr == nil || !*nr || pod.SecurityContext.RunAsUser == 0 ||
		pod.SecurityContext.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod securityContext: want runAsNonRoot, a non-zero runAsUser and the RuntimeDefault seccomp profile")
	}
	if len(pod.Containers) != 1 || pod.Containers[0].Name != "watcher" {
		t.Fatalf("want one container named watcher")
	}
	c := pod.Containers[0]
	vals := checkWatcherArgs(t, "CronJob args", c.Args)
	if c.Args[0] != "compact" {
		t.Errorf("args %q: want watcher compact", c.Args)
	}
	sc := c.SecurityContext
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("container securityContext: want readOnlyRootFilesystem, no privilege escalation, capabilities.drop [ALL]")
	}
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
			t.Errorf("no %s request and limit", r)
		}
	}

	// Volumes: the config from the ConfigMap at --config; state_dir and the
	// targets on the writable PVC.
	volumeOf := func(path string) (name string, readOnly, ok bool) {
		best := ""
		for _, m := range c.VolumeMounts {
			if under(path, m.MountPath) && len(m.MountPath) > len(best) {
				best, name, readOnly, ok = m.MountPath, m.Name, m.ReadOnly, true
			}
		}
		return
	}
	var cm configMap
	k8sDoc(t, "kubernetes/cronjob/configmap.yaml", &cm)
	name, _, ok := volumeOf(vals["config"])
	if !ok {
		t.Fatalf("--config %s is on no volume", vals["config"])
	}
	pvc := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.Name == name && (v.ConfigMap == nil || v.ConfigMap.Name != cm.Metadata.Name) {
			t.Errorf("--config %s is on volume %s, not the ConfigMap %s", vals["config"], name, cm.Metadata.Name)
		}
		if v.PersistentVolumeClaim != nil {
			pvc[v.Name] = true
		}
	}
	if filepath.Base(vals["config"]) != "config.toml" {
		t.Errorf("--config %s: the ConfigMap's key is config.toml", vals["config"])
	}
	cfgText := cronJobConfig(t)
	cfg := parseConfig(t, "cronjob config.toml", []byte(cfgText))
	paths := map[string]string{"state_dir": cfg.Watcher.StateDir}
	for _, tg := range cfg.Targets {
		paths["target "+tg.Name] = tg.Path
	}
	if len(cfg.Targets) == 0 {
		t.Error("the CronJob's config has no targets")
	}
	for what, p := range paths {
		name, ro, ok := volumeOf(p)
		if !ok || ro || !pvc[name] {
			t.Errorf("%s %s is not on the writable PVC volume (mount %q, readOnly %v)", what, p, name, ro)
		}
	}
	validate(t, "kubernetes/cronjob/configmap.yaml config.toml", []byte(cfgText))
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify on the units of systemd/, their
// /usr/local/bin/watcher pointed at the binary built from this repository
// (verify checks that ExecStart= programs exist).
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa := needTool(t, "verify the systemd units", "systemd-analyze")
	units, err := filepath.Glob("systemd/*")
	if err != nil {
		t.Fatal(err)
	}
	units = slices.DeleteFunc(units, func(u string) bool {
		return !strings.HasSuffix(u, ".service") && !strings.HasSuffix(u, ".timer")
	})
	if len(units) < 3 {
		t.Fatalf("units %q: want watcher.service, watcher-compact.service and watcher-compact.timer", units)
	}
	dir := t.TempDir()
	bin := watcherBinary(t)
	var args []string
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/watcher", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, args...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %q: %v\n%s", units, err, out)
	}
}

func TestSystemdCompactTimer(t *testing.T) {
	daemon := parseUnit(t, "systemd/watcher.service")
	svc := parseUnit(t, "systemd/watcher-compact.service")
	timer := parseUnit(t, "systemd/watcher-compact.timer")

	if v, _ := svc.last("Service", "Type"); v != "oneshot" {
		t.Errorf("watcher-compact.service Type=%s, want oneshot", v)
	}
	exec, _ := svc.last("Service", "ExecStart")
	f := strings.Fields(exec)
	if len(f) < 2 || f[0] != "/usr/local/bin/watcher" {
		t.Fatalf("ExecStart=%s: want /usr/local/bin/watcher compact …", exec)
	}
	vals := checkWatcherArgs(t, "watcher-compact.service ExecStart", f[1:])
	daemonExec, _ := daemon.last("Service", "ExecStart")
	if f[1] != "compact" || !strings.Contains(daemonExec, "--config "+vals["config"]) {
		t.Errorf("ExecStart=%s: want compact on the daemon's config (%s)", exec, daemonExec)
	}
	if _, ok := svc.last("Service", "TimeoutStartSec"); !ok {
		t.Errorf("watcher-compact.service: no TimeoutStartSec= (a oneshot has no start timeout by default)")
	}
	if _, ok := svc["Install"]; ok {
		t.Errorf("watcher-compact.service has an [Install] section: the timer starts it")
	}
	// The same user, paths and hardening as the daemon's unit.
	for k, v := range daemon["Service"] {
		switch k {
		case "Type", "ExecStart", "ExecStartPre", "ExecReload", "KillMode", "Restart", "RestartSec",
			"RestartPreventExitStatus", "TimeoutStopSec", "LimitNOFILE":
			continue // what a daemon needs and a oneshot does not
		}
		if got := svc["Service"][k]; !slices.Equal(got, v) {
			t.Errorf("watcher-compact.service %s=%q, watcher.service has %q", k, got, v)
		}
	}

	if v, _ := timer.last("Timer", "Unit"); v != "watcher-compact.service" {
		t.Errorf("timer Unit=%q, want watcher-compact.service", v)
	}
	if v, _ := timer.last("Timer", "OnCalendar"); v != "*-*-* 00/6:17:00" {
		t.Errorf("OnCalendar=%q, want every 6 hours at minute 17 like the other schedules (%s)", v, scheduleCron)
	}
	if v, _ := timer.last("Timer", "Persistent"); v != "true" {
		t.Errorf("Persistent=%q: want true (a run missed while down is made up)", v)
	}
	if v, _ := timer.last("Install", "WantedBy"); v != "timers.target" {
		t.Errorf("timer WantedBy=%q, want timers.target", v)
	}
}

func TestCronD(t *testing.T) {
	data, err := os.ReadFile("cron/watcher-compact")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(filepath.Base("cron/watcher-compact"), ".") {
		t.Error("cron.d ignores file names with a dot")
	}
	var jobs [][]string
	env := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && !strings.ContainsAny(k, " \t") {
			env[k] = v
			continue
		}
		jobs = append(jobs, strings.Fields(l))
	}
	if len(jobs) != 1 || len(jobs[0]) < 8 {
		t.Fatalf("want one job line: 5 time fields, a user, watcher compact …; got %q", jobs)
	}
	j := jobs[0]
	if expr := strings.Join(j[:5], " "); expr != scheduleCron {
		t.Errorf("schedule %q, want %q like the other schedules", expr, scheduleCron)
	}
	checkCron(t, "cron.d", strings.Join(j[:5], " "))
	if j[5] == "root" {
		t.Errorf("runs as root: run it as the owner of Papyra's files")
	}
	if j[6] != "watcher" || !slices.Contains(strings.Split(env["PATH"], ":"), "/usr/local/bin") {
		t.Errorf("command %q with PATH=%q: want watcher from /usr/local/bin", j[6], env["PATH"])
	}
	vals := checkWatcherArgs(t, "cron.d", j[7:])
	if j[7] != "compact" || vals["config"] != "/etc/watcher/config.toml" {
		t.Errorf("want watcher compact --config /etc/watcher/config.toml, got %q", j[6:])
	}
}

func TestNomadPeriodicJob(t *testing.T) {
	path := "nomad/watcher-compact.nomad.hcl"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	body, err := parseHCL(string(data))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	jobs := body.blocks("job")
	if len(jobs) != 1 || len(jobs[0].Labels) != 1 {
		t.Fatalf("want one job block with a name")
	}
	job := jobs[0]
	if job.Attrs["type"] != "batch" {
		t.Errorf("job type %v, want batch (a periodic job launches batch runs)", job.Attrs["type"])
	}
	periodic := job.one(t, "periodic")
	crons, _ := periodic.Attrs["crons"].([]any)
	if len(crons) != 1 || crons[0] != scheduleCron {
		t.Errorf("periodic crons %v, want [%q] like the other schedules", periodic.Attrs["crons"], scheduleCron)
	} else {
		checkCron(t, "nomad periodic", crons[0].(string))
	}
	if periodic.Attrs["prohibit_overlap"] != true {
		t.Errorf("periodic prohibit_overlap %v, want true", periodic.Attrs["prohibit_overlap"])
	}
	if _, ok := periodic.Attrs["time_zone"].(string); !ok {
		t.Errorf("periodic has no time_zone")
	}
	group := job.one(t, "group")
	task := group.one(t, "task")
	config := task.one(t, "config")
	args := toStrings(t, config.Attrs["args"])
	vals := checkWatcherArgs(t, "nomad task args", args)
	if args[0] != "compact" {
		t.Errorf("args %q: want watcher compact", args)
	}
	if task.Attrs["driver"] == "docker" {
		if config.Attrs["readonly_rootfs"] != true || !slices.Equal(toStrings(t, config.Attrs["cap_drop"]), []string{"ALL"}) {
			t.Errorf("docker config: want readonly_rootfs = true and cap_drop = [\"ALL\"]")
		}
		if u, _ := task.Attrs["user"].(string); u == "" || strings.HasPrefix(u, "0") || u == "root" {
			t.Errorf("task user %q: want Papyra's non-root UID:GID", u)
		}
	}
	// The template renders into the task directory, whose local/ is
	// /local in the task's view.
	tmpl := task.one(t, "template")
	dest, _ := tmpl.Attrs["destination"].(string)
	if "/"+strings.TrimPrefix(dest, "/") != vals["config"] {
		t.Errorf("template destination %q, but --config %q", dest, vals["config"])
	}
	cfgText, _ := tmpl.Attrs["data"].(string)
	if strings.Contains(cfgText, "{{") {
		t.Errorf("the template's config uses Nomad template functions: the test cannot validate it")
	}
	cfg := parseConfig(t, path+" template", []byte(cfgText))
	validate(t, path+" template", []byte(cfgText))

	// state_dir and the targets on the writable host volume.
	vols := map[string]string{} // group volume name → host volume source
	for _, v := range group.blocks("volume") {
		if v.Attrs["type"] != "host" || v.Attrs["read_only"] == true {
			t.Errorf("volume %v: want a writable host volume", v.Labels)
		}
		vols[v.Labels[0]], _ = v.Attrs["source"].(string)
	}
	paths := map[string]string{"state_dir": cfg.Watcher.StateDir}
	for _, tg := range cfg.Targets {
		paths["target "+tg.Name] = tg.Path
	}
	if len(cfg.Targets) == 0 {
		t.Error("the job's config has no targets")
	}
	for what, p := range paths {
		ok := false
		for _, m := range task.blocks("volume_mount") {
			dst, _ := m.Attrs["destination"].(string)
			_, hostVol := vols[m.Attrs["volume"].(string)]
			if hostVol && m.Attrs["read_only"] != true && under(p, dst) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s %s is on no writable volume_mount of a host volume", what, p)
		}
	}
	kt, _ := task.Attrs["kill_timeout"].(string)
	if d, err := time.ParseDuration(kt); err != nil || d <= 0 {
		t.Errorf("kill_timeout %q", kt)
	}
}

func toStrings(t *testing.T, v any) []string {
	t.Helper()
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("%v is not a list", v)
	}
	var out []string
	for _, e := range l {
		s, ok := e.(string)
		if !ok {
			t.Fatalf("%v is not a list of strings", v)
		}
		out = append(out, s)
	}
	return out
}
