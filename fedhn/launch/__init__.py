"""Launchers: the ``fedhn`` command line and the Flower processes it starts and stops by PID
(simulation SuperLinks, deployments), comparisons and their reports."""
