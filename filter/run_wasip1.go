//go:build wasip1

package main

import "github.com/asyncmesh/asyncmesh/filter/abi"

func init() { abi.Run(newPlugin) }
