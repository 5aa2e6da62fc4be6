// Command fieldhub is the IoT device hub: `fieldhub serve` runs the broker,
// ingest, store and HTTP API in one process; the other commands manage
// devices, telemetry and dead letters on the same data_dir.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintln(os.Stderr, "fieldhub:", err)
		os.Exit(1)
	}
}

// exitError ends the program with a code and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// app carries what every command needs: output streams and the config flags.
type app struct {
	stdout, stderr io.Writer
	configFile     string
	root           *cobra.Command
}

func (a *app) config() (*config.Config, error) {
	return config.Load(a.configFile, a.root.PersistentFlags())
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "fieldhub",
		Short: "fieldhub: an IoT device hub with an embedded MQTT broker and time-series store",
		Long: `fieldhub is an IoT device hub in one binary. Devices connect over MQTT
(3.1.1 or 5) to its embedded broker, authenticate with a per-device token,
and publish telemetry that the hub validates and stores. Operators use the
HTTP API and the command line.

Configuration comes from the embedded defaults (configs/fieldhub.yaml), the
file named by --config, FIELDHUB_* environment variables (FIELDHUB_MQTT_ADDR
for mqtt.addr) and the flags below, each later source winning.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	a.root = root
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&a.configFile, "config", "", "config file (YAML); see configs/fieldhub.yaml for every key")
	for _, k := range config.Keys() {
		pf.String(config.FlagName(k), "", "config key "+k)
	}
	root.AddCommand(
		newServeCmd(a),
		newDeviceCmd(a),
		newTelemetryCmd(a),
		newDeadLetterCmd(a),
		newCommandCmd(a),
		newTwinCmd(a),
		&cobra.Command{
			Use:   "version",
			Short: "Print the fieldhub version",
			Args:  cobra.NoArgs,
			Run:   func(cmd *cobra.Command, args []string) { fmt.Fprintln(a.stdout, "fieldhub", version) },
		},
	)
	return root
}
