"""Reports over the request log: the hourly rollups (``rollups``), the queries behind the dashboard and
``thriftgate report`` (``queries``) and the retention of raw rows (``retention``)."""
