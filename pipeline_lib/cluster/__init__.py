"""The cluster stage (cLDM paper): validity indices and cluster-count selection."""
