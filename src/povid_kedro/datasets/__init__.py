"""Custom Kedro datasets: image folders, model directories, API clients, caches."""
