// Package deploy has no code: its directories hold the deployment files of
// the watcher (systemd units and timers, Kubernetes manifests, a container
// recipe, a cron job, a Nomad job, Prometheus alert rules), and its tests
// check that they agree with each other and with the program. README.md
// describes how to use them.
package deploy
