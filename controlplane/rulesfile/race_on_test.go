//go:build race

package rulesfile

// slack stretches the time bounds of tests under the race detector, which
// makes this code about ten times slower.
const slack = 10
