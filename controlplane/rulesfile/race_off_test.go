//go:build !race

package rulesfile

const slack = 1
