package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/hub"
)

func newServeCmd(a *app) *cobra.Command {
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hub: MQTT broker, ingest, store and HTTP API",
		Long: `Run the hub until SIGINT or SIGTERM, then shut down in order: stop
accepting, drain, commit, close. On first start it creates an admin API
token in data_dir/admin.token (mode 0600).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			log := cfg.Logger(os.Stderr)
			ctx := cmd.Context()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("cpu profile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("cpu profile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			h, err := hub.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			if err := h.Start(ctx); err != nil {
				stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = h.Stop(stopCtx)
				return err
			}
			<-ctx.Done()
			log.Info("shutting down")
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := h.Stop(stopCtx); err != nil {
				return fmt.Errorf("shutdown: %w", err)
			}
			log.Info("stopped")
			return nil
		},
	}
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) to this file until shutdown")
	return cmd
}
