package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.toml", "config file")
	if err := fs.Parse(args); err != nil {
		return exitBadConfig
	}
	cfg, warnings, err := LoadConfig(*configPath)
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "invalid config: %v\n", err)
		return exitBadConfig
	}
	fmt.Fprintf(stdout, "%s: valid, %d target(s), %d warning(s)\n", cfg.Path, len(cfg.Targets), len(warnings))
	return exitOK
}
