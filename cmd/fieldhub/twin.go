package main

import (
	"net/url"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/registry"
)

func newTwinCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "twin",
		Short: "Read and set device twins: desired and reported state (needs a running hub)",
		Long: `A device twin is the state operators want (desired, published retained on
devices/ID/twin/desired) and the state the device reports (on
devices/ID/twin/reported), each versioned. The delta lists the desired
top-level keys whose reported value differs.`,
	}
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Print a device's twin: desired, reported and delta (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			var tw command.TwinView
			if _, err := api.send(cmd.Context(), "GET", "/api/v1/devices/"+url.PathEscape(args[0])+"/twin", nil, nil, &tw); err != nil {
				return err
			}
			return writeJSONOut(a, tw)
		},
	}
	set := &cobra.Command{
		Use:   "set ID JSON",
		Short: "Replace a device's desired state with a JSON object (\"-\" reads stdin)",
		Long: `Replace the desired state of device ID with the JSON object given (or read
from stdin with "-"), and print the stored document with its new version.
The hub publishes it retained, so the device gets it now or when it next
subscribes to devices/ID/twin/desired.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readDoc(cmd, args[1])
			if err != nil {
				return err
			}
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			var td registry.TwinDoc
			if _, err := api.send(cmd.Context(), "PUT", "/api/v1/devices/"+url.PathEscape(args[0])+"/twin/desired", nil, doc, &td); err != nil {
				return err
			}
			return writeJSONOut(a, td)
		},
	}
	c.AddCommand(get, set)
	return c
}
