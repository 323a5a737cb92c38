// Command watcher is the Papyra reactive compactor: it compacts Papyra's
// persistence (NDJSON files, rotating file sets, Redis Streams) the moment it
// is needed, from outside the Papyra process, while Papyra keeps writing.
//
// Usage:
//
//	watcher run      [--config FILE]
//	watcher compact  [--config FILE] [--target NAME]... [--dry-run] [--json] [--now UNIX]
//	watcher validate [--config FILE | FILE]
//	watcher status   [--addr HOST:PORT | --nats URL] [--json]
//	watcher request  pre-backup|pre-migration|compact [--target NAME]... [--nats URL] [--timeout D] [--expect N]
//	watcher request  pre-backup --snapshot [--snapshot-ttl D] | post-backup --snapshot-id ID
//	watcher version   (or watcher --version)
//
// The environment overrides what differs per node or is secret (see
// "Environment overrides" in docs/config.md): WATCHER_NODE,
// WATCHER_NATS_TOKEN, WATCHER_NATS_PASSWORD, WATCHER_REDIS_PASSWORD and
// WATCHER_REDIS_PASSWORD_<TARGET>.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit statuses (docs/cli.md).
const (
	exitOK        = 0
	exitFailure   = 1
	exitBadConfig = 2
)

// command is one subcommand: it parses its own flags from args and returns
// the process exit status.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) int

var commands = map[string]command{
	"run":      runDaemon,
	"compact":  runCompact,
	"validate": runValidate,
	"status":   runStatus,
	"request":  runRequest,
	"version":  runVersion,
}

const usage = `watcher: the Papyra reactive compactor

Usage:
  watcher run      [--config FILE]     run the daemon (SIGHUP reloads, SIGTERM stops)
  watcher compact  [--config FILE] [--target NAME]... [--dry-run] [--json] [--now UNIX]
  watcher validate [--config FILE | FILE]   check a config file
  watcher status   [--addr HOST:PORT | --nats URL] [--json]   one daemon, or the fleet over NATS
  watcher request  pre-backup|pre-migration|compact [--target NAME]... [--nats URL] [--timeout D] [--expect N]
  watcher request  pre-backup --snapshot [--snapshot-ttl D] | post-backup --snapshot-id ID
  watcher version  (or watcher --version)

The config file defaults to ./config.toml.
` + envUsage + `
Run 'watcher COMMAND -h' for a command's flags.
`

func main() {
	os.Exit(mainWith(os.Args[1:], os.Stdout, os.Stderr))
}

func mainWith(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return exitBadConfig
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "watcher: unknown command %q\n\n%s", args[0], usage)
		return exitBadConfig
	}
	// SIGINT/SIGTERM cancel the context; `run` installs its own handling
	// for SIGHUP.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd(ctx, args[1:], stdout, stderr)
}

// newFlagSet returns the flag set of a subcommand. Its -h/--help output is
// synopsis, then about (a paragraph, may be ""), then the flags.
func newFlagSet(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n", synopsis)
		if about != "" {
			fmt.Fprintf(stderr, "\n%s\n", strings.TrimRight(about, "\n"))
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs. ok is false when the command must stop
// with code: exitOK after -h/--help (the usage was printed), exitBadConfig
// after a bad flag (flag printed the error and the usage).
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitBadConfig, false
	}
	return exitOK, true
}

// strayArgument reports an argument the command does not take, with its
// usage, and returns exitBadConfig.
func strayArgument(fs *flag.FlagSet, arg string, stderr io.Writer) int {
	fmt.Fprintf(stderr, "watcher %s: unexpected argument %q\n\n", fs.Name(), arg)
	fs.Usage()
	return exitBadConfig
}

// envUsage lists the environment overrides, for the usage texts.
const envUsage = `
Environment (overrides the config file; empty means unset):
  WATCHER_NODE                     [watcher] node
  WATCHER_NATS_TOKEN               [nats] token
  WATCHER_NATS_PASSWORD            [nats] password
  WATCHER_REDIS_PASSWORD           the password of every redis target's url
  WATCHER_REDIS_PASSWORD_<TARGET>  the password of one redis target's url; TARGET is
                                   its name in upper case with '-' as '_' (events-eu:
                                   WATCHER_REDIS_PASSWORD_EVENTS_EU); wins over the above
`

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
