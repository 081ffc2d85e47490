from setuptools import find_packages, setup

setup(
    name="task-queue",
    version="0.1.0",
    description=(
        "A durable task queue service: a REST API in front of pykka actors, results in SQLite"
        " (or PostgreSQL and RabbitMQ, for many instances)."
    ),
    python_requires=">=3.11",
    packages=find_packages(include=["actors", "actors.*", "api", "api.*", "conf", "conf.*"]),
    package_data={"conf": ["*.toml"], "api": ["static/*"]},
    py_modules=["run"],
    install_requires=[
        "pykka>=4.1,<5",
        "falcon>=4.0,<5",
        "waitress>=3.0.1,<3.1",  # api/server.py's graceful stop reaches into its loop
        "orjson>=3.10,<4",
        "prometheus-client>=0.20,<1",
        "psycopg[binary]>=3.2,<4",  # store.url = "postgresql://...": the distributed mode's store
        "psycopg-pool>=3.2,<4",  # its readers' connections
        "pika>=1.3,<2",  # queue.url = "amqp://...": the distributed mode's queue
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            "schemathesis>=4.0,<5",
            "openapi-spec-validator>=0.7,<1",
            "playwright>=1.45,<2",  # drives Debian's chromium (apt-get install chromium) in tests/e2e/test_dashboard.py
            "ruff>=0.8",
            "mypy>=1.13",
        ],
        "bench": ["k6>=1.0,<2"],  # also wrk and hey, from Debian: apt-get install wrk hey
    },
    entry_points={"console_scripts": ["task-queue=run:main"]},
)
