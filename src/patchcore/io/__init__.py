"""Files in and out: reading images, model directories, prediction files, heatmap overlays."""
